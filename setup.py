"""Install the RLHF library (`rlhf_ds`) and its Triton kernels.

The kernels live in `rlhf_kernels/`, never in a folder called `kernels`: Hugging Face
publishes a package called `kernels` that `transformers` and `bitsandbytes` import when
they find it, and a folder of that name on sys.path (the repository root, whenever
Python runs from it) would answer in its place.
"""
from setuptools import find_packages, setup

install_requires = [
    "torch>=2.4",
    "deepspeed>=0.16",
    "transformers>=4.46",
    "datasets>=3.0",
    "tokenizers>=0.20",
    # Triton ships Linux x86-64 wheels only; elsewhere the torch paths are used.
    "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
    "bitsandbytes>=0.45",
    "peft>=0.13",
    "tensorboard>=2.15",
    "pyyaml>=6.0",
    "tqdm>=4.66",
    "numpy>=1.26",
    "matplotlib>=3.8",
]

setup(
    name="rlhf_ds",
    version="0.1.0",
    description="RLHF on DeepSpeed ZeRO-3: SFT, reward models, PPO, DPO and GRPO with Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rlhf_ds", "rlhf_ds.*", "rlhf_kernels", "rlhf_kernels.*"]),
    # The DeepSpeed configs travel inside the package, so `--deepspeed zero3` works in any install
    # (configs/*.json in the repository link to these files).
    package_data={"rlhf_ds.ds_configs": ["*.json"]},
    install_requires=install_requires,
    extras_require={
        "test": ["pytest>=8.0"],
        # Side-by-side baselines for `pytest benchmarks/`: TRL 1.12 is the last release with a PPOTrainer.
        "bench": ["pytest>=8.0", "trl==1.12.0"],
        "gpu": ["flash-attn>=2.6"],
    },
)
