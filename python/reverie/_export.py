"""Export to and import from plain formats: numpy ``.npz`` (one array per field) and Minari
datasets of episodes (optional: ``pip install minari``).

>>> to_npz(buf, "replay.npz")                 # every stored item, oldest first
>>> buf2 = from_npz("replay.npz")              # the same items, in a new buffer
>>> ds = to_minari(episode_buf, "reverie/run-v0")
>>> buf3 = from_minari("reverie/run-v0", num_envs=8)
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np
import torch

from ._buffer import ReplayBuffer
from ._episodes import EpisodeBuffer
from ._samplers import Prioritized, sampler_from_config
from ._spec import Field, normalize_spec

FORMAT = "reverie-npz"
FORMAT_VERSION = 1
_META = "__reverie__"
_KEYS = "__keys__"
_FLAGS = "__row_flags__"
_LEAVES = "__priority_leaves__"
_RESERVED = (_META, _KEYS, _FLAGS, _LEAVES)

# Row flag bits of the core (cpp/include/reverie/episodes.h).
_TERMINATED, _TRUNCATED, _FINAL_ROW, _FIRST_ROW = 1, 2, 4, 8
_STREAM_START = 0x80


# ---- helpers -------------------------------------------------------------------------------

def _stored_keys(buf: ReplayBuffer) -> np.ndarray:
    """The keys of the stored items, oldest first."""
    if buf._core is None:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(buf._core.stored_keys())


def _gather(buf: ReplayBuffer, slots: np.ndarray) -> Dict[str, np.ndarray]:
    """{field: array [n, *shape]} of the given slots (copies; bfloat16 as its int16 bits)."""
    index = torch.from_numpy(slots)
    out = {}
    for name, column in buf.columns.items():
        rows = column.index_select(0, index)
        if rows.dtype == torch.bfloat16:
            rows = rows.view(torch.int16)
        out[name] = rows.numpy()
    return out


def _field_value(field: Field, array: np.ndarray) -> Any:
    """An array as the value extend() takes for ``field`` (bfloat16 from its int16 bits)."""
    if field.dtype == "bfloat16":
        if array.dtype == np.int16:
            return torch.from_numpy(np.ascontiguousarray(array)).view(torch.bfloat16)
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(torch.bfloat16)
    return array


def _options_of(buf: ReplayBuffer) -> Optional[Dict[str, Any]]:
    if isinstance(buf, EpisodeBuffer):
        options = dict(buf._options())
        options["obs_fields"] = list(options["obs_fields"])
        return options
    return None


# ---- npz -----------------------------------------------------------------------------------

def to_npz(buf: ReplayBuffer, path: "str | os.PathLike[str]", *, compressed: bool = False) -> None:
    """Writes every stored item of ``buf`` to a numpy ``.npz`` file, oldest first.

    The file holds one array ``[n, *shape]`` per field (bfloat16 fields as their int16
    bits), ``__keys__`` (the items' keys, int64 [n]) and ``__reverie__``, a JSON string
    with the format version, the buffer's class, capacity, spec, sampler and episode
    options. Prioritized buffers add ``__priority_leaves__`` (the stored priorities);
    episode buffers add ``__row_flags__`` (where episodes start and end). ``np.load``
    reads it without reverie. The file is written to a temporary name in the same
    directory and renamed into place.

    Args:
        buf: a ReplayBuffer or EpisodeBuffer.
        path: the file to write (taken as given: no ``.npz`` is appended).
        compressed: zip-deflate the arrays (``np.savez_compressed``).
    """
    buf._check_open()
    keys = _stored_keys(buf)
    slots = buf._slots_of(keys) if keys.size else keys
    arrays: Dict[str, np.ndarray] = {}
    bad = sorted(set(buf.spec) & set(_RESERVED))
    if bad:
        raise ValueError(f"field names {bad} are reserved by the npz format")
    arrays.update(_gather(buf, slots) if buf._core is not None else {})
    arrays[_KEYS] = keys
    meta: Dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "class": type(buf).__name__,
        "capacity": buf.capacity, "seed": buf.seed, "sampler": buf.sampler.config(),
        "spec": {n: [f.dtype, list(f.shape)] for n, f in buf.spec.items()},
        "episodes": _options_of(buf), "written": 0 if buf._core is None else int(buf._core.written),
    }
    core = buf._core
    if core is not None and core.prioritized:
        leaves, scale_exp, max_q = core.priority_state()
        arrays[_LEAVES] = np.asarray(leaves).view(np.int64)[slots]
        meta["priorities"] = {"scale_exp": int(scale_exp), "max_q": float(max_q)}
    if core is not None and isinstance(buf, EpisodeBuffer):
        flags, _ = core.episode_state()
        arrays[_FLAGS] = np.asarray(flags)[slots]
    arrays[_META] = np.array(json.dumps(meta))
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    save = np.savez_compressed if compressed else np.savez
    try:
        with open(tmp, "wb") as f:
            save(f, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_npz(path: "str | os.PathLike[str]") -> Tuple[Dict[str, np.ndarray], Optional[Dict[str, Any]]]:
    """All arrays of the file and its reverie metadata (None for a plain npz)."""
    with open(os.fspath(path), "rb") as f:  # closed here even when numpy fails midway
        try:
            data = np.load(f, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not an .npz archive of fields")
        try:
            with data:
                arrays = {name: data[name] for name in data.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise ValueError(f"{path}: a damaged .npz archive ({type(e).__name__}: {e})") from None
    if not arrays:
        raise ValueError(f"{path}: the archive holds no arrays")
    meta = None
    if _META in arrays:
        try:
            meta = json.loads(str(arrays.pop(_META)[()]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: its {_META} entry is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path}: its {_META} entry is not reverie npz metadata")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: reverie npz format version {meta.get('version')}; this "
                             f"reverie reads version {FORMAT_VERSION}")
    return arrays, meta


def _new_buffer(meta: Optional[Dict[str, Any]], spec: Dict[str, Field], n: int,
                kwargs: Dict[str, Any]) -> ReplayBuffer:
    if meta is None:
        cls = EpisodeBuffer if "num_envs" in kwargs else ReplayBuffer
        capacity = kwargs.pop("capacity", None)
        if capacity is None:
            num_envs = int(kwargs.get("num_envs", 1))
            capacity = max(n, num_envs) if cls is ReplayBuffer else max(-(-n // num_envs), 1) * num_envs
        return cls(capacity, spec, **kwargs)
    episodic = meta["class"] == "EpisodeBuffer"
    cls = EpisodeBuffer if episodic or "num_envs" in kwargs else ReplayBuffer
    args: Dict[str, Any] = {"sampler": sampler_from_config(dict(meta["sampler"])),
                            "seed": meta["seed"]}
    if episodic:
        args.update(meta["episodes"])
        args["obs_fields"] = tuple(args["obs_fields"])
    args.update(kwargs)
    capacity = args.pop("capacity", meta["capacity"])
    return cls(capacity, spec, **args)


def from_npz(path: "str | os.PathLike[str]", buf: Optional[ReplayBuffer] = None,
             **kwargs: Any) -> ReplayBuffer:
    """Reads items from an ``.npz`` file into a buffer (a new one, or ``buf``), oldest first.

    The file is one written by ``to_npz`` (the new buffer gets its class, capacity, sampler,
    seed and episode options; priorities and episode boundaries come back too), or any
    ``.npz`` of equal-length arrays ``[n, *shape]``, one per field (e.g. ``np.savez(path,
    obs=obs, action=action, ...)``); for an EpisodeBuffer (``num_envs=`` given, or ``buf``
    an EpisodeBuffer) the rows are in key order: step t of env e at row ``t * num_envs + e``.

    Args:
        path: the file.
        buf: a buffer to extend (its spec must match the file's fields); default: a new one.
        **kwargs: constructor arguments of the new buffer (``capacity``, ``sampler``,
            ``seed``, ``num_envs``, ...), overriding the file's; not with ``buf``.

    Raises:
        ValueError: the file is not an npz archive, its arrays differ in length, its
            metadata is malformed, or its fields do not fit ``buf``. ``buf`` is then unchanged.
        FileNotFoundError: no such file.
    """
    if buf is not None and kwargs:
        raise TypeError(f"from_npz: constructor arguments {sorted(kwargs)} are for a new "
                        "buffer, not with buf=")
    arrays, meta = _read_npz(path)
    keys = arrays.pop(_KEYS, None)
    flags = arrays.pop(_FLAGS, None)
    leaves = arrays.pop(_LEAVES, None)
    if meta is not None:
        try:
            spec = normalize_spec({n: (d, tuple(s)) for n, (d, s) in meta["spec"].items()})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed spec in its metadata ({e})") from None
        if set(arrays) != set(spec):
            raise ValueError(f"{path}: arrays {sorted(arrays)} do not match its spec {sorted(spec)}")
        arrays = {n: arrays[n] for n in spec}
    else:
        spec = {}
        for name, arr in arrays.items():
            if arr.ndim == 0:
                raise ValueError(f"{path}: array '{name}' is a scalar; every field needs an "
                                 "item axis [n, *shape]")
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{path}: array '{name}' has dtype {arr.dtype}, not a number type")
            try:
                spec[name] = Field(arr.dtype, arr.shape[1:])
            except TypeError as e:
                raise ValueError(f"{path}: array '{name}': {e}") from None
    lengths = {name: arr.shape[0] if arr.ndim else -1 for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: the field arrays differ in length: {lengths}")
    n = next(iter(lengths.values()), 0)
    for name, field in spec.items():
        arr = arrays[name]
        want = field.torch_dtype if field.dtype != "bfloat16" else torch.int16
        if meta is not None and (tuple(arr.shape[1:]) != field.shape
                                 or torch.from_numpy(arr[:0]).dtype != want):
            raise ValueError(f"{path}: array '{name}' is {arr.dtype} {arr.shape[1:]}, its spec "
                             f"says {field}")
    for extra, name in ((keys, _KEYS), (flags, _FLAGS), (leaves, _LEAVES)):
        if extra is not None and extra.shape != (n,):
            raise ValueError(f"{path}: {name} has shape {extra.shape}, expected ({n},)")
    if buf is None:
        buf = _new_buffer(meta, spec, n, dict(kwargs))
    elif buf.spec and dict(buf.spec) != spec:
        raise ValueError(f"{path}: its fields {spec} do not match the buffer's spec {buf.spec}")
    if n == 0:
        return buf
    episodic = isinstance(buf, EpisodeBuffer)
    num_envs = cast(EpisodeBuffer, buf).num_envs if episodic else 1
    if episodic and n % num_envs:
        raise ValueError(f"{path}: {n} rows are not whole steps of num_envs={num_envs} envs")
    before = 0 if buf._core is None else int(buf._core.written)
    values = {name: _field_value(spec[name], arr) for name, arr in arrays.items()}
    if episodic:
        values = {name: v.reshape(n // num_envs, num_envs, *v.shape[1:]) for name, v in values.items()}
    buf.extend(**values)
    # The imported rows still stored are the newest ones: the last min(n, capacity) of them.
    kept = min(n, buf.capacity)
    new_keys = np.asarray(buf._core.stored_keys())[-kept:]
    if episodic and flags is not None and before == 0 and meta is not None \
            and (meta.get("episodes") or {}).get("num_envs") == num_envs:
        _restore_flags(cast(EpisodeBuffer, buf), new_keys, flags[n - kept:])
    if leaves is not None and isinstance(buf.sampler, Prioritized) and meta is not None:
        _restore_priorities(buf, meta, new_keys, leaves[n - kept:], fresh=before == 0)
    return buf


def _restore_flags(buf: EpisodeBuffer, keys: np.ndarray, flags: np.ndarray) -> None:
    """Sets the episode flags of imported rows to the original's (whose oldest stored rows may
    continue an episode that began before them)."""
    core = buf._core
    row_flags, streams = core.episode_state()
    row_flags = np.array(row_flags, dtype=np.uint8)
    row_flags[buf._slots_of(keys)] = flags.astype(np.uint8)
    streams = np.array(streams, dtype=np.uint8)
    n = buf.num_envs
    envs = core.insertions_of(keys) % n  # step t of env e is insertion t * n + e
    for e in range(n):
        mine = keys[envs == e]
        if mine.size:
            streams[e] = row_flags[buf._slots_of(mine[-1:])][0]
    core.set_episode_state(row_flags, streams)


def _restore_priorities(buf: ReplayBuffer, meta: Mapping[str, Any], keys: np.ndarray,
                        leaves: np.ndarray, fresh: bool) -> None:
    """The stored priorities of imported items: bit for bit where alpha, eps and the
    fixed-point scale agree, else inverted to a priority (p = q^(1/alpha) - eps) for update_priorities."""
    if not keys.size:
        return
    core = buf._core
    info = meta.get("priorities") or {}
    cur, scale_exp, max_q = core.priority_state()
    saved_sampler = meta.get("sampler") or {}
    same = (saved_sampler.get("alpha") == cast(Prioritized, buf.sampler).alpha
            and saved_sampler.get("eps") == cast(Prioritized, buf.sampler).eps)
    if same and int(info.get("scale_exp", -1)) == int(scale_exp):
        merged = np.array(cur, dtype=np.uint64)
        merged[buf._slots_of(keys)] = leaves.view(np.uint64)
        holds = np.zeros(buf.capacity, dtype=bool)
        holds[buf._slots_of(core.stored_keys())] = True
        merged[~holds] = 0
        saved = float(info.get("max_q", max_q))
        top = saved if fresh else max(float(max_q), saved)  # the max priority new items get
        core.set_priority_state(merged, int(scale_exp), top)
        return
    q = np.ldexp(leaves.astype(np.float64), -int(info.get("scale_exp", 0)))
    alpha = float(saved_sampler.get("alpha", cast(Prioritized, buf.sampler).alpha)) or 1.0  # the file's sampler
    eps = float(saved_sampler.get("eps", cast(Prioritized, buf.sampler).eps))
    p = np.maximum(q ** (1.0 / alpha) - eps, 0.0)
    buf.update_priorities(keys, p)


# ---- Minari --------------------------------------------------------------------------------

def _minari() -> Any:
    try:
        import minari
    except ImportError:
        raise ImportError("Minari export/import needs the minari package: pip install minari "
                          '(and h5py for its default storage: pip install "minari[hdf5]")') from None
    return minari


def _space_of(field: Field) -> Any:
    import gymnasium as gym

    dt = np.dtype(field.dtype) if field.dtype != "bfloat16" else None
    if dt is None:
        raise ValueError("a bfloat16 field has no gymnasium space; convert it first")
    if dt.kind == "f":
        return gym.spaces.Box(-np.inf, np.inf, field.shape, dtype=dt)
    if dt.kind == "b":
        return gym.spaces.Box(False, True, field.shape, dtype=dt)
    info = np.iinfo(dt)
    return gym.spaces.Box(info.min, info.max, field.shape, dtype=dt)


def stored_episodes(buf: EpisodeBuffer) -> List[Tuple[int, List[int]]]:
    """The complete episodes stored in ``buf``: (env, keys of its rows) per episode, the keys
    running from its first row to its final-observation row, ordered by when they ended."""
    if not isinstance(buf, EpisodeBuffer):
        raise TypeError(f"expected an EpisodeBuffer, got {type(buf).__name__}")
    keys = _stored_keys(buf)
    if not keys.size:
        return []
    flags = np.asarray(buf._core.episode_state()[0])[buf._slots_of(keys)]
    n = buf.num_envs
    envs = buf._core.insertions_of(keys) % n  # step t of env e is insertion t * n + e
    episodes = []
    for e in range(n):
        mine = np.nonzero(envs == e)[0]
        current: Optional[List[int]] = None
        for i in mine:
            f = int(flags[i])
            key = int(keys[i])
            if f & _FINAL_ROW:
                if current is not None:
                    current.append(key)
                    episodes.append((e, current))
                current = None
                continue
            if f & _FIRST_ROW:
                current = [key]
            elif current is not None:
                current.append(key)
    order = {int(k): i for i, k in enumerate(keys)}  # keys are oldest first
    episodes.sort(key=lambda ep: order[ep[1][-1]])
    return episodes


def to_minari(buf: EpisodeBuffer, dataset_id: str, *, action: str = "action",
              observation_space: Any = None, action_space: Any = None, env: Any = None,
              data_format: Optional[str] = None, jpeg_encoding: bool = False,
              **metadata: Any) -> Any:
    """Writes the complete episodes stored in an EpisodeBuffer as a Minari dataset.

    Episodes whose first row was overwritten, and the episodes still running, are left
    out. Each episode has ``T + 1`` observations (its final one included), ``T`` actions,
    rewards, terminations and truncations; fields other than the obs, action, reward and
    flag fields go to ``infos`` (``T + 1`` values each, like observations). Several obs
    fields make a Dict observation space. Spaces default to Boxes of the fields' dtypes
    and shapes; images are stored losslessly unless ``jpeg_encoding=True``.

    Args:
        buf: the EpisodeBuffer.
        dataset_id: the Minari id, e.g. ``"reverie/cartpole/run-v0"``; written under
            ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``).
        action: the action field's name.
        observation_space, action_space, env: as for ``minari.create_dataset_from_buffers``.
        data_format: Minari's storage format ("hdf5", "arrow"; default Minari's).
        **metadata: more ``create_dataset_from_buffers`` arguments (author, description...).

    Returns:
        The ``minari.MinariDataset``.
    """
    minari = _minari()
    from minari.data_collector import EpisodeBuffer as MinariEpisode

    episodes = stored_episodes(buf)
    spec = buf.spec
    roles = buf._roles
    obs_fields = list(buf.obs_fields)
    if action not in spec:
        raise ValueError(f"the action field '{action}' is not in the buffer's spec "
                         f"({', '.join(spec)}); name it with action=...")
    extra = [n for n in spec if n not in obs_fields and n != action and n not in roles.values()]
    if observation_space is None and env is None:
        import gymnasium as gym

        if len(obs_fields) == 1:
            observation_space = _space_of(spec[obs_fields[0]])
        else:
            observation_space = gym.spaces.Dict({n: _space_of(spec[n]) for n in obs_fields})
    if action_space is None and env is None:
        action_space = _space_of(spec[action])
    out = []
    for _, ep_keys in episodes:
        rows = _gather(buf, buf._slots_of(np.asarray(ep_keys, dtype=np.int64)))
        obs: Any = rows[obs_fields[0]] if len(obs_fields) == 1 else {n: rows[n] for n in obs_fields}
        out.append(MinariEpisode(
            observations=obs, actions=rows[action][:-1], rewards=rows[roles["reward"]][:-1],
            terminations=rows[roles["terminated"]][:-1], truncations=rows[roles["truncated"]][:-1],
            infos={n: rows[n] for n in extra} or None))
    if not out:
        raise ValueError("the buffer holds no complete episode (an episode is complete once its "
                         "final-observation row is written and its first row still stored)")
    if data_format is not None:
        metadata["data_format"] = data_format
    return minari.create_dataset_from_buffers(
        dataset_id, out, env=env, observation_space=observation_space,
        action_space=action_space, jpeg_encoding=jpeg_encoding, **metadata)


def _episode_rows(ep: Any, obs_fields: Sequence[str], info_fields: Sequence[str],
                  names: Mapping[str, str], reward_dtype: Any) -> Dict[str, np.ndarray]:
    """One Minari episode as reverie rows: T transition rows and the final-observation row."""
    steps = len(ep.rewards)
    obs = ep.observations
    if isinstance(obs, tuple):
        raise ValueError("Tuple observation spaces are not supported; use a Dict or a Box")
    obs = obs if isinstance(obs, dict) else {obs_fields[0]: obs}
    rows: Dict[str, np.ndarray] = {}
    for name in obs_fields:
        arr = np.asarray(obs[name])
        if arr.shape[0] != steps + 1:
            raise ValueError(f"episode {ep.id}: {arr.shape[0]} observations for {steps} steps "
                             "(expected steps + 1)")
        rows[name] = arr

    def padded(values: Any, dtype: Any = None) -> np.ndarray:
        arr = np.asarray(values, dtype=dtype)
        if isinstance(values, dict):
            raise ValueError("Dict action spaces are not supported")
        if arr.shape[0] != steps:
            raise ValueError(f"episode {ep.id}: {arr.shape[0]} values for {steps} steps")
        return np.concatenate([arr, np.zeros((1, *arr.shape[1:]), arr.dtype)])

    rows[names["action"]] = padded(ep.actions)
    rows[names["reward"]] = padded(ep.rewards, reward_dtype)
    rows[names["terminated"]] = padded(ep.terminations, bool)
    rows[names["truncated"]] = padded(ep.truncations, bool)
    ends = rows[names["terminated"]][:-1] | rows[names["truncated"]][:-1]
    if steps == 0 or not ends[-1] or ends[:-1].any():
        raise ValueError(f"episode {ep.id}: expected its last step (and only it) to be "
                         "terminated or truncated")
    for name in info_fields:
        value = (ep.infos or {}).get(name)
        if value is None:
            raise ValueError(f"episode {ep.id} has no info '{name}'")
        arr = np.asarray(value)
        if arr.shape[0] == steps:
            arr = np.concatenate([arr, np.zeros((1, *arr.shape[1:]), arr.dtype)])
        if arr.shape[0] != steps + 1:
            raise ValueError(f"episode {ep.id}: info '{name}' has {arr.shape[0]} values for "
                             f"{steps} steps")
        rows[name] = arr
    return rows


def from_minari(dataset: Any, num_envs: int = 1, capacity: Optional[int] = None, *,
                obs_field: str = "obs", action: str = "action", reward: str = "reward",
                terminated: str = "terminated", truncated: str = "truncated",
                info_fields: Sequence[str] = (), reward_dtype: Any = np.float32,
                episode_indices: Optional[Iterable[int]] = None, **kwargs: Any) -> EpisodeBuffer:
    """Fills a new EpisodeBuffer with the episodes of a Minari dataset.

    Each episode becomes its T transition rows (obs_t, action_t, reward_t, terminated_t,
    truncated_t) and then its final-observation row (the last observation; other fields
    zero), the row convention of ``EpisodeBuffer``. Episodes are dealt to the ``num_envs``
    streams in dataset order, each to the stream with the fewest rows so far. Streams are
    written in lockstep, so shorter streams are filled up to the longest with the first
    rows of the dataset's longest episode written as a running episode (no termination, no
    final row): real transitions that ``to_minari`` does not export. With ``num_envs=1``
    (the default) there is no filling.

    Args:
        dataset: a ``minari.MinariDataset`` or a dataset id (loaded locally).
        num_envs: the buffer's streams.
        capacity: the buffer's rows (a multiple of num_envs); default: all rows fit.
        obs_field: the obs field's name for a Box observation space (a Dict space gives
            one field per key).
        action, reward, terminated, truncated: field names.
        info_fields: infos to import as fields (``T`` or ``T + 1`` values per episode).
        reward_dtype: float32 (default) or float64.
        episode_indices: the episodes to import (default all).
        **kwargs: more EpisodeBuffer arguments (sampler, seed, frame_stack, ...).
    """
    minari = _minari()
    if isinstance(dataset, (str, os.PathLike)):
        dataset = minari.load_dataset(os.fspath(dataset))
    first = True
    obs_fields: List[str] = [obs_field]
    names = {"action": action, "reward": reward, "terminated": terminated, "truncated": truncated}
    episodes: List[Dict[str, np.ndarray]] = []
    for ep in dataset.iterate_episodes(episode_indices):
        if first and isinstance(ep.observations, dict):
            obs_fields = list(ep.observations)
        first = False
        episodes.append(_episode_rows(ep, obs_fields, info_fields, names, reward_dtype))
    if not episodes:
        raise ValueError("the dataset holds no episodes")
    streams: List[List[int]] = [[] for _ in range(num_envs)]
    lengths = [0] * num_envs
    for i, ep in enumerate(episodes):
        e = int(np.argmin(lengths))
        streams[e].append(i)
        lengths[e] += len(ep[action])
    steps = max(lengths)
    longest = max(range(len(episodes)), key=lambda i: len(episodes[i][action]))
    if capacity is None:
        capacity = steps * num_envs
    buf = EpisodeBuffer(capacity, num_envs=num_envs, obs_fields=tuple(obs_fields),
                        reward=reward, terminated=terminated, truncated=truncated, **kwargs)
    template = episodes[0]
    block = {n: np.zeros((steps, num_envs, *a.shape[1:]), a.dtype) for n, a in template.items()}
    for e, mine in enumerate(streams):
        t = 0
        for i in mine:
            ep = episodes[i]
            k = len(ep[action])
            for name, arr in ep.items():
                block[name][t:t + k, e] = arr
            t += k
        if t < steps:  # fill with a running copy of the longest episode's first rows
            pad = steps - t
            for name, arr in episodes[longest].items():
                block[name][t:, e] = arr[:pad]
            block[terminated][t:, e] = False
            block[truncated][t:, e] = False
    chunk = max(1, (64 << 20) // max(1, sum(a[0].nbytes for a in block.values())))
    for t in range(0, steps, chunk):
        buf.extend(**{n: a[t:t + chunk] for n, a in block.items()})
    return buf


__all__ = ["from_minari", "from_npz", "stored_episodes", "to_minari", "to_npz"]
