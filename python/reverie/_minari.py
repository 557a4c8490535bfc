"""Minari datasets of episodes, to and from an EpisodeBuffer (optional: ``pip install minari``).

>>> ds = to_minari(episode_buf, "reverie/run-v0")
>>> buf = from_minari("reverie/run-v0", num_envs=8)
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._episodes import EpisodeBuffer
from ._npz_format import gather_rows
from ._spec import Field

# Row flag bits of the core (cpp/include/reverie/episodes.h).
_FINAL_ROW, _FIRST_ROW = 4, 8


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
    if buf._table is None:
        return []
    keys = buf._table.stored_keys()
    if not keys.size:
        return []
    flags = buf._table.state_view("episodes.row_flags")[buf._slots_of(keys)]
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
        rows = gather_rows(buf, buf._slots_of(np.asarray(ep_keys, dtype=np.int64)))
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


__all__ = ["from_minari", "stored_episodes", "to_minari"]
