"""Shared test fixtures: the tiny I2VGen-XL model, the official reference cases, small real clips.

No test touches the network: the hub is forced offline before anything imports huggingface_hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# one thread: the tiny model's kernels are too small to gain from a second one (measured: the same wall
# time on an idle machine, twice the CPU), and with the other core busy a second thread waits on a
# descheduled one (up to 6x slower); subprocesses and Ray actors set their own share
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"  # the recordings made for this project (tools/reference/)
# the shared recordings, kept once beside the checkout (`../shared/fixtures`, as CI and every session lay it
# out; ANYV2V_SHARED_FIXTURES names another place): the tiny I2VGen-XL, ConsistI2V and SEINE models with the
# official AnyV2V runs on them (made by ../shared/tools), and the KubeRay schemas (../shared/schemas)
SHARED = Path(os.environ.get("ANYV2V_SHARED_FIXTURES") or REPO.parent / "shared" / "fixtures")
SCHEMAS = SHARED.parent / "schemas"
TINY_MODEL = SHARED / "anyv2v-reference" / "tiny-i2vgen-xl"
CASE_DIRS = {"case-a": SHARED / "anyv2v-reference" / "case-a"} | {
    p.name: p for p in sorted((FIXTURES / "i2vgen-xl-cases").iterdir()) if p.is_dir()
}


def pytest_configure(config):
    if not (SHARED / "anyv2v-reference").is_dir():
        raise pytest.UsageError(
            f"the shared recordings are not at {SHARED}: lay the project's shared/ folder beside the checkout "
            "(../shared) or set ANYV2V_SHARED_FIXTURES to its fixtures/ folder"
        )


def load_frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])


class ReferenceCase:
    """One run of the official code: its settings, inputs and recorded tensors."""

    def __init__(self, path: Path):
        from safetensors.torch import load_file

        self.path = path
        self.case = json.loads((path / "case.json").read_text())
        self.ref = load_file(path / "reference.safetensors")
        self.frames = load_frames(path / "source")
        self.edited = np.asarray(Image.open(path / "edited_first_frame.png").convert("RGB"))

    def inversion_settings(self):
        from anyv2v_batch import InversionSettings

        c = self.case
        return InversionSettings(
            steps=c["inversion_steps"],
            prompt=c["inversion_prompt"],
            guidance_scale=c.get("inversion_guidance_scale", 1.0),
            negative_prompt=c.get("inversion_negative_prompt", ""),
        )

    def edit_settings(self, **overrides):
        from anyv2v_batch import EditSettings

        c = self.case
        values = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"],
            steps=c["steps"],
            guidance_scale=c["guidance_scale"],
            pnp_conv=c["pnp_conv"],
            pnp_spatial=c["pnp_spatial_attn"],
            pnp_temporal=c["pnp_temporal_attn"],
            init_step=c["init_t_index"],
            seed=c["seed"],
        )
        return EditSettings(**(values | overrides))

    @property
    def recorded_inversion_timesteps(self) -> list[int]:
        """The timesteps whose inverted latents the recording holds: every one, or in a slim recording
        (tools/reference/slim.py) the sampling timesteps and the inversion's first, middle and last."""
        return self.case.get("inverted_timesteps", self.case["inversion_timesteps"])

    def reference_inversion(self):
        """The official inverted latents (those recorded) as our `Inversion` value."""
        from anyv2v_batch import Inversion

        ts = tuple(self.recorded_inversion_timesteps)
        return Inversion(
            backbone="i2vgen-xl",
            timesteps=ts,
            latents=torch.stack([self.ref[f"inverted/{t}"][0] for t in ts]),
            source_first_frame=self.frames[0],
            fps=self.case["fps"],
            settings=self.inversion_settings(),
        )


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref||."""
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).norm() / ref.norm())


@pytest.fixture(scope="session")
def tiny_backbone():
    from anyv2v_batch import load_backbone
    from anyv2v_batch.loading import quiet_libraries

    quiet_libraries()
    return load_backbone("i2vgen-xl", str(TINY_MODEL), device="cpu", dtype="float32")


# The suite runs on two pytest-xdist workers, a module whole on one (--dist loadfile, pyproject.toml). The
# longest modules go first, so that the two workers finish together (xdist hands out a module at a time:
# the last ones handed out must be short); every module over about 10 s, in the order of its measured
# time (benchmarks/RESULTS.md). Within a module the order is kept (some tests read an earlier one's output).
LONGEST_FIRST = (
    "test_object_store.py", "test_faults.py", "test_evaluate_job.py", "test_reference_i2vgen_xl.py",
    "test_rerun_settings.py", "test_long_clip_job.py", "test_inversions.py", "test_reference_consisti2v.py",
    "test_anydoor.py", "test_injection.py", "test_batch_job.py", "test_demo.py", "test_editor_plugin.py",
    "test_backbones_job.py", "test_backbone_i2vgen_xl.py", "test_instantid.py", "test_hostile_shards.py",
    "test_long_clips.py", "test_pools.py", "test_cli.py", "test_reference_seine.py", "test_consisti2v_unet.py",
    "test_organism_effect.py", "test_seine_unet.py", "test_organism.py", "test_windows.py",
)  # fmt: skip
# a test that starts Ray jobs is slow (seconds of both cores each): marked by the fixtures it uses
SLOW_FIXTURES = {"ray_local", "ray_address", "cluster", "plugin_site"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's order is kept


def stop_shared_ray() -> None:
    """For a module that needs a Ray instance of its own: the shared one stops first."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_session():
    yield
    stop_shared_ray()


@pytest.fixture(scope="module")
def ray_local(ray_session):
    """One local Ray instance shared by every module that needs nothing special of it: started on first use
    and kept (a Ray start is seconds of both cores); "local": never another instance on this machine."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield


@pytest.fixture(scope="session")
def case_a() -> ReferenceCase:
    return ReferenceCase(CASE_DIRS["case-a"])


def moving_clip(frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A small synthetic clip: a bright square moving over a gradient, plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([60 + 150 * xx / width, 50 + 120 * yy / height, 120 + 0 * xx], -1)
    out = []
    for i in range(frames):
        f = base.copy()
        x0 = (3 * i) % max(1, width - 8)
        f[4:12, x0 : x0 + 8] = [230, 50, 40]
        out.append(np.clip(f + rng.normal(0, 2, f.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


TINY_CLIP_IMAGE_SIZE = 30  # 5 x 5 patches of 6 pixels
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_clip(folder: Path) -> Path:
    """A tiny random-weight transformers CLIPModel saved as a model folder (weights, the tiny I2VGen-XL
    fixture's CLIP tokenizer, an OpenAI-style preprocessor config), for the scorer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY_MODEL / "tokenizer")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=TINY_CLIP_IMAGE_SIZE, patch_size=6, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = TINY_CLIP_IMAGE_SIZE
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "CLIPImageProcessor", "image_mean": OPENAI_CLIP_MEAN,
                    "image_std": OPENAI_CLIP_STD, "size": {"shortest_edge": size},
                    "crop_size": {"height": size, "width": size}})
    )  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The `gate` editor (tests/gate.py) on the path of this process, and of every Ray instance and driver
    started after it (PYTHONPATH): request it before the module's Ray starts."""
    import os
    import sys

    from gate import install_gate_plugin

    site = install_gate_plugin(tmp_path_factory)
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *([old_path] if old_path else [])])
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    if old_path is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old_path


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """The folder the gate editor reports to and waits at (tests/gate.py)."""
    from gate import Gate

    return Gate(tmp_path_factory.mktemp("gate"))
