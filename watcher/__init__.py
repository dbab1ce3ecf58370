"""metastudio-watcher: alerts on Huawei Cloud MetaStudio voice-training job state changes."""

__version__ = "0.1.0"
