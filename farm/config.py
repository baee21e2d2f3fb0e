"""All configuration in one place: defaults, then `$FARM_HOME/farm.toml`, then `FARM_*` variables.

The embedded default needs nothing: SQLite, a server-less broker and local storage, all below
`FARM_HOME` (default `./.farm`). Distributed mode sets `database_url` and `broker_url`.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from farm.errors import ConfigError

DEFAULT_UPSTREAM = "https://pypi.org/simple/"


def _home() -> Path:
    return Path(os.environ.get("FARM_HOME", ".farm")).absolute()


class _TomlSource(PydanticBaseSettingsSource):
    """Reads `$FARM_HOME/farm.toml` (flat keys, the same names as the settings)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _home() / "farm.toml"
        if not path.is_file():
            return {}
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


class TokenConfig(BaseModel):
    """An API token: who (name), what it may do (role), and the sha256 of the secret (never the secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64)
    role: Literal["submit", "worker", "admin"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ImageConfig(BaseModel):
    """A build image for one platform and the CPython versions it carries (/opt/python/cpXY-cpXY)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    image: str
    pythons: list[str]


class UploadTarget(BaseModel):
    """Another index the farm uploads wheels to, with the legacy upload API (twine's protocol)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(description="upload URL, e.g. http://host:8080/ (pypiserver) or http://host:3141/USER/INDEX/ (devpi)")
    username: str = ""
    password: str = ""
    password_env: str = Field("", description="an environment variable holding the password (instead of `password`)")
    channel: str | None = Field(None, description="promotions into this channel upload here automatically")
    index_url: str = Field("", description="its simple index, to confirm an upload is listed; default: not checked")


def _default_images() -> dict[str, list[ImageConfig]]:
    from farm.worker.platforms import default_images  # each platform's own

    return default_images()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_", extra="forbid", frozen=True)

    home: Path = Field(default_factory=_home, description="where the embedded farm keeps its state")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///$FARM_HOME/farm.db")
    broker_url: str = Field("", description="Celery broker; default a folder below $FARM_HOME")
    storage_root: Path | None = Field(None, description="sdists, logs, wheels; default $FARM_HOME/storage")
    index_root: Path | None = Field(None, description="static index; default $FARM_HOME/index")
    upstream_index: str = Field(DEFAULT_UPSTREAM, description="PEP 503 index sdists and build deps come from")
    engine: Literal["native", "cibuildwheel"] = "native"
    platform: str = Field("", description="this worker's platform queue; default: the host's")
    platforms: list[str] = Field(default_factory=list, description="platforms the coordinator plans builds for; default: the host's")
    pythons: list[str] = Field(default_factory=list, description="native engine interpreters (paths or versions); default: every CPython 3 the host has (this one, PATH, pyenv, uv)")
    system_packages: Literal["install", "check", "ignore"] = Field(
        "install", description="native engine: what to do with a recipe's system packages on the host; packages "
        "the farm finds for a failed build are installed on the host only when this is set to install explicitly")
    contents_mirror: str = Field("", description="Debian/Ubuntu mirror whose Contents index says which package "
                                 "provides what a failed build lacks; default: the one the build image's (or the "
                                 "host's) apt sources name")
    # Intake policy (farm/coordinator/intake.py): what the farm takes in from upstream --------------
    intake_allow: list[str] = Field(default_factory=list, description="when not empty, only releases matching one of "
                                    "these requirements (`name`, `name>=2`) are taken in")
    intake_deny: list[str] = Field(default_factory=list, description="releases matching one of these are refused")
    min_release_age_days: float = Field(0.0, ge=0, description="refuse upstream releases younger than this, or whose "
                                        "upload time is unknown (fail-closed); 0: off")
    min_release_age_exempt_pins: bool = Field(True, description="versions pinned exactly at submit skip the cool-down "
                                              "(their dependencies do not)")
    max_sdist_bytes: int = 200 * 1024 * 1024
    max_unpacked_bytes: int = 2 * 1024 * 1024 * 1024
    max_members: int = 100_000
    build_timeout: float = 3600.0
    # The sandbox package code runs in (farm/worker/sandbox/, docs/security.md) -------------------
    sandbox: bool = Field(True, description="run package code (builds, imports, tests) in the platform's sandbox")
    sandbox_uid: int = Field(65534, description="the unprivileged uid package code runs as when the worker is root (nobody)")
    sandbox_memory: str = Field("8g", description="default address-space limit per sandboxed process")
    sandbox_processes: int = Field(2048, description="default limit of the sandbox user's processes")
    sandbox_file_size: str = Field("8g", description="default limit of a file package code writes")
    sandbox_cpu_time: int = Field(0, description="default CPU seconds per process; 0: the build timeout")
    test_timeout: float = 900.0
    recipes_dirs: list[Path] = Field(default_factory=list, description="extra recipe folders, searched first")
    api_host: str = "127.0.0.1"
    api_port: int = 8477
    poll_interval: float = 0.01
    api_retry_seconds: float = Field(600.0, ge=0, description="how long a remote worker keeps retrying the farm's API "
                                     "(uploads of a finished build, sdist downloads) while it is away")
    worker_jobs: int = Field(0, ge=0, description="jobs a worker host runs at once, one worker process each (the "
                             "Pythons of a matrix in parallel); 0: the core count, as far as the "
                             "memory holds build_memory for each")
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between a worker's heartbeats while it runs a job")
    reconcile_interval: float = Field(15.0, gt=0, description="seconds between the coordinator's reconciler passes")
    lost_after: float = Field(60.0, gt=0, description="a running job without a heartbeat for this long, or a queued "
                              "job nobody consumed for this long, is sent again as a new attempt")
    farm_index_url: str = Field("", description="the farm's simple index as workers see it; default the local index folder")

    # Distributed mode (API tokens; the CLI and remote workers talk to the server over HTTP) ----
    tokens: list[TokenConfig] = Field(default_factory=list,
                                      description="API tokens (sha256 only); none: the API answers loopback clients only")
    server_url: str = Field("", description="the farm's API, e.g. http://farm.example:8477; the CLI and remote workers use it")
    token: str = Field("", description="this client's API token (FARM_TOKEN), sent as a Bearer token to server_url")

    # Containers (engine cibuildwheel on Linux, verification in a clean container) ----------------
    docker_host: str = Field("", description="Docker engine socket, e.g. unix:///var/lib/farm-docker/docker.sock; default DOCKER_HOST")
    images: dict[str, list[ImageConfig]] = Field(default_factory=_default_images,
                                                 description="build images per platform; the Python matrix is their union")
    verify_images: dict[str, list[ImageConfig]] = Field(
        default_factory=dict, description="per platform: images without compilers to verify in, by Python; none: verify on the host")
    build_memory: str = Field("4g", description="memory limit of a build container")
    build_pids: int = 4096
    cibuildwheel_timeout: float = 3600.0
    build_wheels_shared_seconds: float = Field(3600.0, ge=0, description="a container build's resolved build "
                                               "requirements (the wheelhouse) are reused by later jobs on this "
                                               "worker host with the same requirements and target for this long "
                                               "(the other Pythons of a matrix); 0: every job resolves its own")

    # Index: channels, virtual indexes, provenance links, upload targets, retention --------------
    # (farm/index/channels.py, farm/index/targets.py, farm/records.py; docs/index.md)
    public_url: str = Field("", description="the index's public base URL (absolute PEP 740 provenance links); default http://api_host:api_port/")
    channels: list[str] = Field(default_factory=lambda: ["staging", "stable"],
                                description="channels, lowest first; builds publish to the first, which is also /simple/")
    channel_requirements: dict[str, list[str]] = Field(default_factory=lambda: {"stable": ["linux-x86_64"]},
                                                       description="platforms a version must be verified on to enter a channel")
    virtual_indexes: dict[str, list[str]] = Field(
        default_factory=lambda: {"prod": ["stable"], "dev": ["staging", "stable"]},
        description="indexes merged from channels in order (first wins per file name), served at /<name>/simple/")
    private_channels: list[str] = Field(default_factory=list, description="channels whose pages and files need a token "
                                        "(role read or more); a virtual index listing one is private too")
    upload_binaries: list[str] = Field(default_factory=list, description="channels that take uploaded compiled wheels "
                                       "for platforms the farm builds (default: only pure wheels and other platforms)")
    serve_sdists: list[str] = Field(default_factory=list, description="channels whose pages also list, beside the "
                                    "wheels, the sdist the farm built them from (with its sha256 and upload time); "
                                    "a virtual index lists those of its channels that do")
    upload_targets: dict[str, UploadTarget] = Field(default_factory=dict, description="other indexes (`farm publish-to`)")
    gc_keep_versions: dict[str, int] = Field(default_factory=lambda: {"staging": 10},
                                             description="`farm gc`: newest versions kept per project in these channels")
    gc_min_age_days: float = Field(14.0, description="`farm gc`: files and logs younger than this are never removed")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # type: ignore[override]
        return (init_settings, env_settings, _TomlSource(settings_cls))

    # Derived locations -------------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'farm.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or "farmfs://"

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def storage(self) -> Path:
        return self.storage_root or self.home / "storage"

    @property
    def index(self) -> Path:
        return self.index_root or self.home / "index"

    def verify_image(self, platform: str, python: str) -> str | None:
        return next((i.image for i in self.verify_images.get(platform, []) if python in i.pythons), None)

    @property
    def verify_index_url(self) -> str:
        """Where verification installs dependencies from: the farm's own index, and nothing else."""
        if self.farm_index_url:
            return self.farm_index_url
        if self.server_url and self.index_root is None:  # a remote worker: the server's index
            return self.server_url.rstrip("/") + "/simple/"
        return self.index.as_uri() + "/simple/"

    @property
    def all_recipe_dirs(self) -> list[Path]:
        return [*self.recipes_dirs, builtin_recipe_dir()]

    @property
    def interpreters(self) -> list[str]:
        """The configured interpreters; empty: the platform finds every CPython the host has."""
        return list(self.pythons)


def builtin_recipe_dir() -> Path:
    """The built-in recipes: the package `farm.recipes.builtin` of an installed farm (the wheel maps
    the repository's top-level `recipes/` there), else `recipes/` beside the `farm` package of a
    source checkout."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("farm.recipes.builtin")
    except ImportError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(location).is_dir():
            return Path(location)
    return Path(__file__).resolve().parent.parent / "recipes"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def reset_settings() -> None:
    """Forget the cached settings (tests and `farm --home` change the environment)."""
    get_settings.cache_clear()
