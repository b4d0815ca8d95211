"""The only package that imports deepspeed: process groups, engines, generation mode, checkpoints."""
from .checkpoint import CheckpointManager, seed_everything
from .distributed import (DistInfo, all_reduce_max, all_reduce_mean, all_reduce_sum, barrier, broadcast_object,
                          get_info, init_distributed, shutdown_distributed)
from .ds_config import load_ds_config, resolve_precision, zero_stage
from .engines import Engine, build_inference_engine, build_train_engine
from .export import export_pretrained, read_metadata
from .hybrid import GenerationSettings, HybridEngine, hf_generate

__all__ = [
    "CheckpointManager", "DistInfo", "Engine", "GenerationSettings", "HybridEngine",
    "all_reduce_max", "all_reduce_mean", "all_reduce_sum", "barrier", "broadcast_object", "build_inference_engine",
    "build_train_engine", "export_pretrained", "get_info", "hf_generate", "init_distributed",
    "load_ds_config", "read_metadata", "resolve_precision", "seed_everything",
    "shutdown_distributed", "zero_stage",
]
