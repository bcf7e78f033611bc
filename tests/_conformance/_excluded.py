"""Public names that have no conformance :class:`Case`, each with the reason (checked by
``test_every_public_name_is_covered``: a public function missing from both the registry and this table fails it)."""

from __future__ import annotations

RECORD = "result record (frozen dataclass / NamedTuple): fields only, built and validated by the function returning it"
SPEC = "configuration/spec record: validated in its __post_init__, exercised through the functions taking it"
PLOT = "plot helper: draws a matplotlib figure from a validated result record (its figures are tested in its area)"
CONST = "constant table (read-only mapping/tuple of names), not a function"
WARN = "warning class (raised by the solvers, tested with them)"
ENTRY = (
    "entry point: runs the whole main job / command line; every failure path is tested in tests/test_study.py and "
    "tests/test_cli.py (no array arguments)"
)

_GROUPS = {
    RECORD: """
        jaxcompare.RandomProjection jaxcompare.KroneckerProjection jaxcompare.StructuredProjection
        jaxcompare.ProjectedKernel jaxcompare.Explanation jaxcompare.KGLM jaxcompare.Faithfulness
        jaxcompare.Attribution jaxcompare.SurrogateRow jaxcompare.SurrogateTable jaxcompare.EnsembleAlphaResult
        jaxcompare.RecipeIdentification jaxcompare.IdentificationReport jaxcompare.MemberSelection
        jaxcompare.ReliabilityBins jaxcompare.BootstrapInterval jaxcompare.SmoothReliability
        jaxcompare.KendallTauResult jaxcompare.CKATest jaxcompare.KernelSimilarity jaxcompare.Result
        jaxcompare.compare.ComparisonResult jaxcompare.data.DigitsTask jaxcompare.data.MNIST1DTask
        jaxcompare.embed.PCAState jaxcompare.embed.LDAState jaxcompare.embed.Separability
        jaxcompare.embed.TwoSampleTest jaxcompare.embed.Extremes jaxcompare.embed.EmbeddingData
        jaxcompare.embed.DemoEmbeddings jaxcompare.lwr.LWRData jaxcompare.lwr.LWRParams jaxcompare.lwr.Kernels
        jaxcompare.lwr.History jaxcompare.lwr.TrainResult jaxcompare.lwr.SpikePrediction
        jaxcompare.lwr.EarlyPhaseCheck jaxcompare.lwr.BulkCheck jaxcompare.lwr.SpikeCheck jaxcompare.lwr.TailCheck
        jaxcompare.lwr.NTKCheck jaxcompare.lwr.InitSpectraCheck jaxcompare.lwr.SpectralDiagnosis
        jaxcompare.spectra.GaussianConstants jaxcompare.spectra.PowerLawFit jaxcompare.spectra.PowerLawGOF
        jaxcompare.spectra.MPBulkFit jaxcompare.spectra.LayerSpectra jaxcompare.study.Report
    """,
    SPEC: """
        jaxcompare.KernelSpec jaxcompare.Kernel jaxcompare.KernelInfo jaxcompare.embed.Transform
        jaxcompare.data.Recipe jaxcompare.lwr.LWRConfig jaxcompare.study.Section
    """,
    PLOT: """
        jaxcompare.plot_attribution jaxcompare.plot_reliability jaxcompare.plot_similarity
        jaxcompare.embed.plot_projection jaxcompare.embed.plot_microscope jaxcompare.lwr.plot_spectra
        jaxcompare.lwr.plot_spectra_grid jaxcompare.lwr.plot_spike_vs_step jaxcompare.lwr.plot_tail_exponents
        jaxcompare.spectra.plot_layer_spectra jaxcompare.spectra.plot_layer_groups
        jaxcompare.spectra.plot_layer_overview
    """,
    CONST: """
        jaxcompare.KERNELS jaxcompare.SURROGATE_KERNELS jaxcompare.PUBLISHED_ALPHA_GRID jaxcompare.SCORE_REDUCTIONS
        jaxcompare.compare.SECTIONS jaxcompare.compare.CHECKPOINT_FORMATS jaxcompare.data.RECIPES
        jaxcompare.data.ARCHITECTURES jaxcompare.data.PAPER_ACCURACY
        jaxcompare.lwr.TEACHERS jaxcompare.lwr.OPTIMIZERS jaxcompare.lwr.MATRICES jaxcompare.lwr.DIAGNOSIS_RULE
        jaxcompare.study.SECTIONS
    """,
    WARN: "jaxcompare.KGLMConvergenceWarning jaxcompare.SolverWarning",
    ENTRY: "jaxcompare.study.run_study jaxcompare.cli.main",
}

#: ``{qualified public name: reason}``
EXCLUDED: dict[str, str] = {name: reason for reason, names in _GROUPS.items() for name in names.split()}
