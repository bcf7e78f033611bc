"""Checkpoint loaders of jaxcompare.compare against independently written bytes, and every failure path."""

import importlib.util
import json
import os
import struct
import zipfile

import numpy as np
import pytest

from jaxcompare.compare import load_checkpoint, load_checkpoints, save_params
from jaxcompare.compare._checkpoints import flatten_params


def _st_bytes(tensors, *, metadata=None, pad=0, order=None):
    """A safetensors file built byte by byte from the format description (not with our writer)."""
    codes = {
        np.dtype("float32"): "F32",
        np.dtype("float64"): "F64",
        np.dtype("float16"): "F16",
        np.dtype("int64"): "I64",
        np.dtype("int32"): "I32",
        np.dtype("bool"): "BOOL",
        np.dtype("uint8"): "U8",
    }
    header, blobs, pos = {}, [], 0
    for name in order or list(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def _raw(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------- reading each format


def test_safetensors_built_by_hand(tmp_path):
    rng = np.random.default_rng(0)
    t = {
        "encoder.layer.0.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "encoder.layer.0.bias": rng.standard_normal(4),
        "encoder.steps": np.array([7], np.int64),
        "head.mask": np.array([True, False, True]),
        "head.half": rng.standard_normal((2, 2)).astype(np.float16),
    }
    p = _write(tmp_path, "m.safetensors", _st_bytes(t, metadata={"format": "pt"}, pad=5))
    tree = load_checkpoint(p)
    assert set(tree) == {"encoder", "head"}
    np.testing.assert_array_equal(tree["encoder"]["layer"]["0"]["weight"], t["encoder.layer.0.weight"])
    assert tree["encoder"]["layer"]["0"]["weight"].dtype == np.float32
    np.testing.assert_array_equal(tree["encoder"]["layer"]["0"]["bias"], t["encoder.layer.0.bias"])
    np.testing.assert_array_equal(tree["encoder"]["steps"], [7])
    np.testing.assert_array_equal(tree["head"]["mask"], [True, False, True])
    np.testing.assert_array_equal(tree["head"]["half"], t["head.half"])


def test_safetensors_slash_names_and_zero_size(tmp_path):
    t = {"Dense_0/kernel": np.arange(6.0).reshape(2, 3), "Dense_0/bias": np.zeros((0,), np.float32), "v.1": np.ones(2)}
    tree = load_checkpoint(_write(tmp_path, "m.safetensors", _st_bytes(t)))
    assert set(tree) == {"Dense_0", "v.1"}  # '/' present: '.' is part of a name
    np.testing.assert_array_equal(tree["Dense_0"]["kernel"], t["Dense_0/kernel"])
    assert tree["Dense_0"]["bias"].shape == (0,)


def test_save_params_safetensors_is_the_documented_format(tmp_path):
    """Our writer's output parsed by a reader written here from the format description."""
    params = {"a": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "b": np.array([1, 2, 3], np.int32)}
    p = tmp_path / "w.safetensors"
    save_params(params, p)
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    buf = raw[8 + n :]
    w = header["a/w"]
    assert w["dtype"] == "F32" and w["shape"] == [3, 4]
    b0, b1 = w["data_offsets"]
    np.testing.assert_array_equal(np.frombuffer(buf[b0:b1], "<f4").reshape(3, 4), params["a"]["w"])
    b = header["b"]
    assert b["dtype"] == "I32"
    np.testing.assert_array_equal(np.frombuffer(buf[b["data_offsets"][0] : b["data_offsets"][1]], "<i4"), [1, 2, 3])
    tensors = {k: e for k, e in header.items() if k != "__metadata__"}  # the format's optional string map
    assert sum(e["data_offsets"][1] - e["data_offsets"][0] for e in tensors.values()) == len(buf)
    assert header["__metadata__"] == {"jaxcompare.separator": "/"}


def test_npz_roundtrip_and_sequences(tmp_path):
    params = {"layers": [{"w": np.ones((2, 3), np.float32)}, {"w": np.zeros((3, 1), np.float64)}], "s": np.eye(2)}
    p = tmp_path / "m.npz"
    save_params(params, p)
    with np.load(p, allow_pickle=False) as z:  # independent: the file holds '/'-joined names
        assert sorted(z.keys()) == ["layers/0/w", "layers/1/w", "s"]
    tree = load_checkpoint(p)
    assert tree["layers"]["1"]["w"].dtype == np.float64
    np.testing.assert_array_equal(tree["s"], np.eye(2))


def test_msgpack_from_flax_to_bytes(tmp_path):
    serialization = pytest.importorskip("flax.serialization")
    rng = np.random.default_rng(1)
    params = {
        "Dense_0": {"kernel": rng.standard_normal((4, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)},
        "Dense_1": {"kernel": rng.standard_normal((3, 2))},
    }
    p = _write(tmp_path, "m.msgpack", serialization.to_bytes(params))
    tree = load_checkpoint(p)
    np.testing.assert_array_equal(tree["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    np.testing.assert_array_equal(tree["Dense_1"]["kernel"], params["Dense_1"]["kernel"])
    # an unknown extension is recognised by its first bytes
    q = _write(tmp_path, "model.ckpt", serialization.to_bytes(params))
    np.testing.assert_array_equal(load_checkpoint(q)["Dense_0"]["bias"], np.zeros(3))


@pytest.mark.skipif(
    importlib.util.find_spec("orbax") is None, reason="orbax-checkpoint is not installed (pip install orbax-checkpoint)"
)
def test_orbax_standard_checkpointer(tmp_path):
    import orbax.checkpoint as ocp

    params = {"Dense_0": {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float32)}}
    d = os.path.abspath(tmp_path / "ck")
    ck = ocp.StandardCheckpointer()
    ck.save(d, params)
    ck.wait_until_finished()
    tree = load_checkpoint(d)
    np.testing.assert_array_equal(tree["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    assert tree["Dense_0"]["kernel"].dtype == np.float32
    ((name, t2),) = load_checkpoints([d])
    assert name == "ck" and set(t2) == {"Dense_0"}


def test_load_checkpoints_directory_sorted_and_list_order(tmp_path):
    for i in (2, 0, 1):
        save_params({"w": np.full((2,), float(i))}, tmp_path / f"s{i}.npz")
    (tmp_path / ".hidden").write_text("x")
    got = load_checkpoints(tmp_path)
    assert [n for n, _ in got] == ["s0", "s1", "s2"]
    assert [float(p["w"][0]) for _, p in got] == [0.0, 1.0, 2.0]
    got = load_checkpoints([tmp_path / "s2.npz", tmp_path / "s0.npz"])
    assert [n for n, _ in got] == ["s2", "s0"]


# ---------------------------------------------------------------- failures: one clear error naming the file


def test_mismatched_leaves_name_checkpoint_and_leaf(tmp_path):
    save_params({"d": {"w": np.ones((2, 3)), "b": np.ones(3)}}, tmp_path / "a.npz")
    save_params({"d": {"w": np.ones((2, 4)), "b": np.ones(3)}}, tmp_path / "b.npz")
    with pytest.raises(ValueError, match=r"b\.npz: parameter 'd/w' has shape \(2, 4\), but \(2, 3\)"):
        load_checkpoints([tmp_path / "a.npz", tmp_path / "b.npz"])
    save_params({"d": {"w": np.ones((2, 3))}}, tmp_path / "c.npz")
    with pytest.raises(ValueError, match=r"c\.npz lacks parameter 'd/b'"):
        load_checkpoints([tmp_path / "a.npz", tmp_path / "c.npz"])
    save_params({"d": {"w": np.ones((2, 3)), "b": np.ones(3), "g": np.ones(1)}}, tmp_path / "e.npz")
    with pytest.raises(ValueError, match=r"e\.npz has parameter 'd/g' that the first checkpoint"):
        load_checkpoints([tmp_path / "a.npz", tmp_path / "e.npz"])
    save_params({"d": {"w": np.ones((2, 3)), "b": np.ones(3)}}, tmp_path / "sub.safetensors")
    (tmp_path / "x").mkdir()
    save_params({"d": {"w": np.ones((2, 3)), "b": np.ones(3)}}, tmp_path / "x" / "a.npz")
    with pytest.raises(ValueError, match="both named 'a'"):
        load_checkpoints([tmp_path / "a.npz", tmp_path / "x" / "a.npz"])


@pytest.mark.parametrize(
    "case, match",
    [
        ("short", "only 4 bytes"),
        ("huge_header", "exceeds the 100 MB limit"),
        ("header_past_end", "runs past the end"),
        ("not_json", "not UTF-8 JSON"),
        ("not_object", "must be a JSON object"),
        ("bad_dtype", "unsupported dtype 'F7'"),
        ("bad_shape", "invalid shape"),
        ("bad_keys", "exactly the keys"),
        ("offsets_outside", "outside the"),
        ("size_mismatch", "need 24"),
        ("overlap", "overlaps"),
        ("hole", "a hole"),
        ("trailing", "trailing bytes"),
        ("metadata", "__metadata__"),
        ("truncated_data", "outside the"),
    ],
)
def test_safetensors_bad_files(tmp_path, case, match):
    f8 = np.arange(3.0).tobytes()
    good = {"w": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]}}
    raw = {
        "short": b"\x01\x00\x00\x00",
        "huge_header": struct.pack("<Q", 2**40) + b"{}",
        "header_past_end": struct.pack("<Q", 100) + b"{}",
        "not_json": struct.pack("<Q", 3) + b"{x}",
        "not_object": _raw([1, 2], b""),
        "bad_dtype": _raw({"w": {"dtype": "F7", "shape": [3], "data_offsets": [0, 24]}}, f8),
        "bad_shape": _raw({"w": {"dtype": "F64", "shape": [-3], "data_offsets": [0, 24]}}, f8),
        "bad_keys": _raw({"w": {"dtype": "F64", "shape": [3]}}, f8),
        "offsets_outside": _raw({"w": {"dtype": "F64", "shape": [3], "data_offsets": [0, 32]}}, f8),
        "size_mismatch": _raw({"w": {"dtype": "F64", "shape": [3], "data_offsets": [0, 16]}}, f8[:16]),
        "overlap": _raw(
            {
                "w": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]},
                "v": {"dtype": "F64", "shape": [1], "data_offsets": [16, 24]},
            },
            f8,
        ),
        "hole": _raw({"w": {"dtype": "F64", "shape": [2], "data_offsets": [8, 24]}}, f8),
        "trailing": _raw(good, f8 + b"\x00" * 8),
        "metadata": _raw({**good, "__metadata__": {"a": 1}}, f8),
        "truncated_data": _raw(good, f8)[:-5],
    }[case]
    p = _write(tmp_path, "bad.safetensors", raw)
    with pytest.raises(ValueError, match=match) as e:
        load_checkpoint(p)
    assert "bad.safetensors" in str(e.value) and "\n" not in str(e.value)


def test_truncated_and_corrupt_files(tmp_path):
    save_params({"w": np.ones((50, 50))}, tmp_path / "ok.npz")
    raw = (tmp_path / "ok.npz").read_bytes()
    p = _write(tmp_path, "cut.npz", raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz is not a valid \.npz"):
        load_checkpoint(p)
    serialization = pytest.importorskip("flax.serialization")
    b = serialization.to_bytes({"w": np.ones((10, 10))})
    p = _write(tmp_path, "cut.msgpack", b[: len(b) // 2])
    with pytest.raises(ValueError, match=r"cut\.msgpack is not a valid flax msgpack file"):
        load_checkpoint(p)
    p = _write(tmp_path, "scalar.msgpack", b"\x01")
    with pytest.raises(ValueError, match=r"scalar\.msgpack \(msgpack\) holds a int"):
        load_checkpoint(p)


def test_unknown_format_missing_path_and_plain_directory(tmp_path):
    p = _write(tmp_path, "weights.bin", b"\x00\x01garbage" * 3)
    with pytest.raises(ValueError, match=r"weights\.bin: unknown format"):
        load_checkpoint(p)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not an orbax checkpoint"):
        load_checkpoint(tmp_path / "plain")
    with pytest.raises(ValueError, match="is empty"):
        load_checkpoints(tmp_path / "plain")


def test_pickles_nan_and_clashes_refused(tmp_path):
    with open(tmp_path / "obj.npz", "wb") as f:
        np.savez(f, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickles are refused"):
        load_checkpoint(tmp_path / "obj.npz")
    np.savez(tmp_path / "nan.npz", w=np.array([1.0, np.nan]))  # written by another tool (save_params refuses it)
    with pytest.raises(ValueError, match=r"nan\.npz: parameter 'w' has 1 NaN/inf"):
        load_checkpoint(tmp_path / "nan.npz")
    with zipfile.ZipFile(tmp_path / "clash.npz", "w") as z:
        for name in ("a.npy", "a/b.npy"):
            with z.open(name, "w") as f:
                np.lib.format.write_array(f, np.ones(2))
    with pytest.raises(ValueError, match="clash"):
        load_checkpoint(tmp_path / "clash.npz")
    with pytest.raises(ValueError, match="must end in .npz or .safetensors"):
        save_params({"w": np.ones(2)}, tmp_path / "w.pkl")


def test_saved_checkpoints_come_back_exactly(tmp_path):
    """A 0-d leaf came back from .safetensors as shape (1,) (so an .npz and a .safetensors of one model did not
    match), a key with a dot as two levels; NaN weights were written and then refused on reading. The oracle is
    the tree saved."""
    params = {"t": np.float32(1.5), "conv.weight": np.arange(3.0), "blocks": [{"w": np.eye(2, dtype=np.float32)}]}
    back = {ext: load_checkpoint(save_params(params, tmp_path / f"m{ext}")) for ext in (".npz", ".safetensors")}
    for tree in back.values():
        assert tree["t"].shape == () and float(tree["t"]) == 1.5
        np.testing.assert_array_equal(tree["conv.weight"], params["conv.weight"])
        np.testing.assert_array_equal(tree["blocks"]["0"]["w"], np.eye(2))
    with pytest.raises(ValueError, match="'w' has 1 NaN/inf values"):
        save_params({"w": np.array([1.0, np.nan])}, tmp_path / "nan.npz")
    assert not (tmp_path / "nan.npz").exists()


def test_files_that_are_not_npz_archives(tmp_path):
    """Garbage bytes named .npz were reported as pickles; an .npy named .npz raised a TypeError; a zip with other
    members (a PyTorch zip checkpoint) was read as raw bytes; a corrupt msgpack dtype escaped as a TypeError."""
    (tmp_path / "g.npz").write_bytes(b"garbage bytes")
    with open(tmp_path / "p.npz", "wb") as f:
        np.save(f, np.ones(3))
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("archive/data.pkl", "not an array")
    for name, match in (("g.npz", "not a zip archive"), ("p.npz", "an .npy file"), ("z.npz", r"not \.npy arrays")):
        with pytest.raises(ValueError, match=match):
            load_checkpoint(tmp_path / name)
    serialization = pytest.importorskip("flax.serialization")
    raw = serialization.msgpack_serialize({"w": np.ones(2, np.float32)}).replace(b"float32", b"floaX32")
    (tmp_path / "c.msgpack").write_bytes(raw)
    with pytest.raises(ValueError, match="c.msgpack is not a valid flax msgpack file"):
        load_checkpoint(tmp_path / "c.msgpack")


def test_nnx_state_saved_under_its_pure_dict_names(tmp_path):
    """save_params(nnx.state(model)) wrote "query/kernel/value" (the Variable's box): the file did not load into
    nnx.replace_by_pure_dict and the spectra's attention rule did not see a query kernel. Oracle: nnx.to_pure_dict."""
    from flax import nnx

    m = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=nnx.Rngs(0))
    state = nnx.state(m, nnx.Param)
    pure = nnx.to_pure_dict(state)
    for ext in ("npz", "safetensors"):
        back = load_checkpoint(save_params(state, str(tmp_path / f"m.{ext}")))
        assert sorted(flatten_params(back)) == sorted(flatten_params(pure))
        for name, leaf in flatten_params(pure).items():
            np.testing.assert_array_equal(flatten_params(back)[name], np.asarray(leaf))
        restored = nnx.state(m, nnx.Param)
        nnx.replace_by_pure_dict(restored, back)  # the saved names are the pure dict's
