"""Training and inference engines: DeepSpeed engines with the small API trainers use.

Trainers never touch torch.distributed or DeepSpeed directly. They call
`engine(...)`, `engine.backward(loss)`, `engine.step()`, `engine.is_main` and
`engine.all_reduce_mean(x)`.

Loss convention: `backward(loss)` takes this rank's share of a GLOBAL mean, i.e.
sum(per-item loss on this rank's micro-batch) / (item count over all ranks and all
micro-batches of the optimizer step). DeepSpeed averages gradients over ranks and
divides by the accumulation steps; we undo both, so the gradient is exactly that of
the global mean however the batch is split (tested on CPU with 1 and 2 ranks).
"""
from __future__ import annotations

import contextlib
import gc
import math
from typing import Callable, Dict, Iterable, List, Optional

import torch

from ..models.quantization import is_quantized
from . import distributed as D
from .ds_config import dtype_of, inference_config, offloads_optimizer, training_config, zero_stage
from .quantized import check_stage, full_precision_cpu, pinned_device


@contextlib.contextmanager
def model_construction(ds_config: Dict, enabled: bool = True):
    """Build models inside this context so that under ZeRO-3 each rank only ever allocates its
    shard: transformers' from_pretrained sees the live HfDeepSpeedConfig and constructs under
    deepspeed.zero.Init, loading weights shard by shard."""
    if not enabled or zero_stage(ds_config) != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    # transformers only keeps a weak reference: the object must stay alive while models are built.
    keep_alive = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del keep_alive
        gc.collect()


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    total_steps = max(1, total_steps)

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown lr schedule {schedule!r}; allowed: cosine, linear, constant")
    return f


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float,
                 lr_overrides: Optional[Callable[[str], Optional[float]]] = None) -> List[Dict]:
    """AdamW groups: no weight decay on biases and norm weights (1-D tensors); `lr_overrides(name)`
    may give some parameters their own learning rate (LoRA adapters)."""
    groups: Dict[tuple, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        decay = weight_decay if ndim >= 2 else 0.0
        group_lr = lr_overrides(name) if lr_overrides else None
        group_lr = lr if group_lr is None else group_lr
        key = (decay, group_lr)
        groups.setdefault(key, {"params": [], "weight_decay": decay, "lr": group_lr})["params"].append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


class Engine:
    """A model held by DeepSpeed (or, for inference at ZeRO stage < 3, a plain module)."""

    def __init__(self, name: str, module: torch.nn.Module, ds_engine=None, ds_config: Optional[Dict] = None,
                 trainable: bool = False):
        self.name = name
        self.ds = ds_engine
        self.ds_config = ds_config or {}
        self.trainable = trainable
        self._module = module
        self.info = D.get_info()

    # ---- identity
    @property
    def module(self) -> torch.nn.Module:
        """The wrapped model (parameters are ZeRO-3 shards when zero_stage == 3)."""
        return self.ds.module if self.ds is not None else self._module

    @property
    def zero_stage(self) -> int:
        return zero_stage(self.ds_config) if self.ds is not None else 0

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def rank(self) -> int:
        return self.info.rank

    # ---- compute
    def __call__(self, *args, **kwargs):
        return (self.ds if self.ds is not None else self._module)(*args, **kwargs)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's share of a global mean (see the module docstring)."""
        if not self.trainable:
            raise RuntimeError(f"engine {self.name!r} is inference-only")
        self.ds.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> None:
        """Call after every micro-batch; the optimizer steps at accumulation boundaries."""
        self.ds.step()

    @property
    def at_accumulation_boundary(self) -> bool:
        return self.ds.is_gradient_accumulation_boundary()

    @property
    def grad_accum(self) -> int:
        return self.ds.gradient_accumulation_steps() if self.ds is not None else 1

    @property
    def lr(self) -> float:
        return float(self.ds.get_lr()[0]) if self.ds is not None and self.trainable else 0.0

    @property
    def global_grad_norm(self) -> Optional[float]:
        norm = self.ds.get_global_grad_norm() if self.ds is not None else None
        return None if norm is None else float(norm)

    @property
    def global_steps(self) -> int:
        return int(self.ds.global_steps) if self.ds is not None else 0

    # ---- collectives
    def all_reduce_sum(self, x):
        return D.all_reduce_sum(x)

    def all_reduce_mean(self, x):
        return D.all_reduce_mean(x)

    # ---- parameters
    @contextlib.contextmanager
    def gathered(self, params: Optional[Iterable[torch.nn.Parameter]] = None, modifier_rank=None):
        """Full parameters inside the block (a no-op below ZeRO-3)."""
        params = list(self.module.parameters() if params is None else params)
        if self.zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
                yield
        else:
            yield

    def full_state_dict(self, bucket_mb: float = 256.0) -> Optional[Dict[str, torch.Tensor]]:
        """The whole model's parameters and buffers as CPU tensors on rank 0 (None elsewhere), gathered
        bucket by bucket so no rank needs more than the model plus one bucket."""
        out: Optional[Dict[str, torch.Tensor]] = {} if self.is_main else None
        named = list(self.module.named_parameters())
        for bucket in _buckets(named, bucket_mb):
            with self.gathered([p for _, p in bucket]):
                if out is not None:
                    for n, p in bucket:
                        out[n] = full_precision_cpu(p)    # 4-bit weights come out dequantised
        if out is not None:
            out.update(persistent_buffers(self.module))
        return out

    # ---- checkpoints
    def save_checkpoint(self, directory: str, tag: str, client_state: Optional[Dict] = None) -> None:
        self.ds.save_checkpoint(directory, tag=tag, client_state=client_state or {})

    def load_checkpoint(self, directory: str, tag: str) -> Dict:
        # bitsandbytes writes a 4-bit weight's quantisation constants as extra state-dict keys that
        # load_state_dict(strict=True) rejects; the frozen 4-bit base is reloaded from the model files
        # anyway, so those keys are let through (the adapters and heads are still restored).
        path, client = self.ds.load_checkpoint(directory, tag=tag, load_module_strict=not is_quantized(self.module),
                                               load_optimizer_states=self.trainable,
                                               load_lr_scheduler_states=self.trainable)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} for engine {self.name!r} in {directory}")
        return client or {}

    def destroy(self) -> None:
        if self.ds is not None and hasattr(self.ds, "destroy"):
            self.ds.destroy()
        self.ds = None
        self._module = None
        gc.collect()


def persistent_buffers(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Buffers that belong in a checkpoint (rotary tables and the like are rebuilt at load, and
    writing them makes `from_pretrained` report unexpected keys)."""
    out = {}
    for prefix, mod in module.named_modules():
        for name, buf in mod._buffers.items():
            if buf is not None and name not in mod._non_persistent_buffers_set:
                out[f"{prefix}.{name}" if prefix else name] = buf.detach().to("cpu", copy=True)
    return out


def _buckets(named, bucket_mb: float):
    """Split (name, param) pairs into groups of about bucket_mb megabytes of full parameters."""
    limit = bucket_mb * 2**20 if bucket_mb and bucket_mb > 0 else float("inf")
    bucket, size = [], 0
    for n, p in named:
        numel = getattr(p, "ds_numel", p.numel())
        nbytes = numel * p.element_size()
        if bucket and size + nbytes > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append((n, p))
        size += nbytes
    if bucket:
        yield bucket


def register_external_parameters(module: torch.nn.Module, sharded: bool) -> None:
    """Parameters a module uses outside their owner's forward (the LM head on the fused log-prob
    path) must be fetched by ZeRO-3 for that module's forward and backward too."""
    params = module.external_parameters() if hasattr(module, "external_parameters") else []
    if sharded and params:
        import deepspeed
        for p in params:
            deepspeed.zero.register_external_parameter(module, p)


def init_new_parameters(module: torch.nn.Module, sharded: bool, seed: int) -> None:
    """Let the model initialise parameters its checkpoint lacked (a new reward/value head), on the
    full tensors: gathered when ZeRO-3 sharded, written on rank 0 and re-partitioned to every rank.
    Must run before deepspeed.initialize, which copies parameters into fp32 master partitions."""
    params = module.new_parameters() if hasattr(module, "new_parameters") else []
    if not params:
        return
    if sharded:
        import deepspeed
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if D.get_info().is_main:
                module.init_new_parameters(seed)
    else:
        module.init_new_parameters(seed)


def _construct(name: str, model_factory: Callable[[], torch.nn.Module], cfg: Dict, seed: int):
    """Build the model (sharded from the start under ZeRO-3) and prepare it for deepspeed.initialize:
    refuse a 4-bit model at a stage that cannot hold it, give new parameters a rank-independent
    init, register parameters used outside their module. Returns (model, is 4-bit)."""
    with model_construction(cfg):
        model = model_factory()
    quantized = is_quantized(model)
    if quantized:
        check_stage(name, zero_stage(cfg))
    init_new_parameters(model, zero_stage(cfg) == 3, seed)
    register_external_parameters(model, zero_stage(cfg) == 3)
    return model, quantized


def build_train_engine(name: str, model_factory: Callable[[], torch.nn.Module], base_ds_config: Dict, *,
                       micro_batch_size: int, grad_accum: int, precision: str, gradient_clipping: float,
                       lr: float, weight_decay: float, total_steps: int, warmup_steps: int,
                       schedule: str = "cosine", lr_overrides=None, source: str = "", seed: int = 0) -> Engine:
    """Construct the model (sharded under ZeRO-3 from the start) and wrap it in a DeepSpeed
    training engine with AdamW and a warm-up + decay schedule."""
    import deepspeed

    info = D.get_info()
    cfg = training_config(base_ds_config, micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                          world_size=info.world_size, precision=precision,
                          gradient_clipping=gradient_clipping, source=source)
    model, quantized = _construct(name, model_factory, cfg, seed)
    if zero_stage(cfg) < 3 and not quantized:    # a 4-bit model was quantised on its device: never moved
        model = model.to(info.device)
    groups = param_groups(model, lr, weight_decay, lr_overrides)
    if offloads_optimizer(cfg):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        optimizer = DeepSpeedCPUAdam(groups, lr=lr, weight_decay=weight_decay)
    else:
        fused = info.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps, warmup_steps))
    with pinned_device(model, info.device) if quantized else contextlib.nullcontext():
        ds_engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                  config=cfg, dist_init_required=False)
    return Engine(name, model, ds_engine, cfg, trainable=True)


def build_inference_engine(name: str, model_factory: Callable[[], torch.nn.Module], base_ds_config: Dict, *,
                           micro_batch_size: int, precision: str, offload_params: bool = False,
                           seed: int = 0) -> Engine:
    """A frozen model (reference policy, reward model): ZeRO-3 partitioned like the trained ones
    when the run uses ZeRO-3, a plain module otherwise."""
    import deepspeed

    info = D.get_info()
    cfg = inference_config(base_ds_config, micro_batch_size=micro_batch_size, world_size=info.world_size,
                           precision=precision, offload_params=offload_params)
    model, quantized = _construct(name, model_factory, cfg, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    if zero_stage(cfg) == 3:
        ds_engine, _, _, _ = deepspeed.initialize(model=model, config=cfg, dist_init_required=False)
        ds_engine.eval()
        return Engine(name, model, ds_engine, cfg, trainable=False)
    if quantized:    # quantised on its device in its compute dtype: never moved or cast
        return Engine(name, model.eval(), None, cfg, trainable=False)
    model = model.to(device=info.device, dtype=dtype_of(precision)).eval()
    return Engine(name, model, None, cfg, trainable=False)
