"""Typed, strict configuration loaded from ``params.yaml``.

``params.yaml`` has two top-level keys:

* ``defaults`` — every section of a study, every value written once;
* ``studies`` — one entry per study; each section there overrides only the keys it names;
* ``volume_studies`` (optional) — studies graded voxel by voxel on 3-D cases
  (:mod:`.volume_study`), each stating every key, loaded by :func:`load_volume_study`.

:func:`load_study` deep-merges the two and builds frozen dataclasses (:mod:`.sections`, one per
params section, fields named as the keys, with the training loop's in :mod:`.fit` and the UNet
models' in :mod:`.unets`); :mod:`.loader` reads and checks. An unknown key, a
missing key or a value of the wrong type raises :class:`ConfigError` naming the full key path, so
a typo in ``params.yaml`` never turns silently into a default.
"""

from brainad.config.fit import AugmentConfig, FitConfig
from brainad.config.loader import (
    from_dict,
    load_study,
    load_volume_study,
    read_params,
    study_names,
    to_dict,
)
from brainad.config.sections import (
    ConfigError,
    DCGANConfig,
    DCGANStudyConfig,
    DenoisingVQGANStudyConfig,
    EvaluateConfig,
    FilterConfig,
    InputNoiseConfig,
    LesionConfig,
    MatchedConfig,
    PerceptualConfig,
    PhantomConfig,
    PreprocessConfig,
    PriorConfig,
    PriorStudyConfig,
    ScoreConfig,
    SourceConfig,
    SplitConfig,
    StudyConfig,
    ThresholdConfig,
    VolumeConfig,
    VQGANConfig,
    VQGANStudyConfig,
)
from brainad.config.unets import (
    DAEConfig,
    DAEStudyConfig,
    InpainterConfig,
    InpainterStudyConfig,
    SegmenterConfig,
    SegmenterStudyConfig,
)
from brainad.config.volume_study import (
    CasePatterns,
    CaseSourceConfig,
    CombinationConfig,
    ModelVariantConfig,
    RolesConfig,
    SliceRulesConfig,
    VariantsConfig,
    VolumeModelsConfig,
    VolumeStudyConfig,
    VoxelDetectorConfig,
    VoxelEvaluateConfig,
)

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DAEConfig",
    "DAEStudyConfig",
    "DCGANConfig",
    "DCGANStudyConfig",
    "DenoisingVQGANStudyConfig",
    "EvaluateConfig",
    "FilterConfig",
    "FitConfig",
    "InpainterConfig",
    "InpainterStudyConfig",
    "InputNoiseConfig",
    "LesionConfig",
    "MatchedConfig",
    "PerceptualConfig",
    "PhantomConfig",
    "PreprocessConfig",
    "PriorConfig",
    "PriorStudyConfig",
    "ScoreConfig",
    "SegmenterConfig",
    "SegmenterStudyConfig",
    "SourceConfig",
    "SplitConfig",
    "StudyConfig",
    "ThresholdConfig",
    "VolumeConfig",
    "VolumeStudyConfig",
    "VoxelDetectorConfig",
    "VoxelEvaluateConfig",
    "CasePatterns",
    "CaseSourceConfig",
    "CombinationConfig",
    "ModelVariantConfig",
    "VariantsConfig",
    "RolesConfig",
    "SliceRulesConfig",
    "VolumeModelsConfig",
    "VQGANConfig",
    "VQGANStudyConfig",
    "from_dict",
    "load_study",
    "load_volume_study",
    "read_params",
    "study_names",
    "to_dict",
]
