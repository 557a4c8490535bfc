"""Export to / import from .npz and Minari datasets (reverie._export)."""

import warnings

import numpy as np
import pytest
import torch
from keys import fifo_insertion, fifo_key

import reverie as rv
from reverie import _minari as minari_io


def _filled(sampler=None, capacity=100, n=250):
    buf = rv.ReplayBuffer(capacity, sampler=sampler, seed=3)
    for i in range(n):  # wraps around: the oldest n - capacity are overwritten
        buf.add(obs=np.full(3, i, np.float32), action=i, half=torch.tensor(i / 7).bfloat16())
    return buf


def _episode_buffer(num_envs=3, capacity=120, steps=100, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    buf = rv.EpisodeBuffer(capacity, num_envs=num_envs, seed=seed, **kwargs)
    for _ in range(steps):
        buf.extend(obs=rng.random((num_envs, 2)).astype(np.float32),
                   action=rng.integers(0, 4, num_envs),
                   reward=rng.random(num_envs).astype(np.float32),
                   terminated=rng.random(num_envs) < 0.08,
                   truncated=rng.random(num_envs) < 0.04,
                   logp=rng.random(num_envs).astype(np.float32))
    return buf


def _stored(buf):
    slots = torch.from_numpy(buf._slots_of(buf._core.stored_keys()))  # oldest first
    return {n: c.index_select(0, slots) for n, c in buf.columns.items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("sampler", [None, rv.Prioritized(alpha=0.6, eps=1e-3)])
def test_npz_round_trip_replay_buffer(tmp_path, sampler):
    buf = _filled(sampler)
    if sampler is not None:
        batch = buf.sample(40)
        buf.update_priorities(batch.indices, torch.rand(40) * 5)
    path = tmp_path / "buf.npz"
    rv.to_npz(buf, path)
    with np.load(path) as data:  # readable without reverie, oldest first
        assert np.array_equal(data["action"], np.arange(150, 250))
        assert np.array_equal(data["__keys__"], fifo_key(np.arange(150, 250), 100))
        assert data["obs"].shape == (100, 3) and data["half"].dtype == np.int16
    back = rv.from_npz(path)
    assert type(back) is rv.ReplayBuffer and back.capacity == 100 and back.seed == buf.seed
    assert back.spec == buf.spec and len(back) == 100
    _same(_stored(back), _stored(buf))
    if sampler is not None:
        assert back.sampler.config() == buf.sampler.config()
        # The saved buffer itself: the same keys in the same slots, priorities bit for bit.
        assert torch.equal(back.priorities(), buf.priorities())
        assert torch.equal(back.sample(64).indices, buf.sample(64).indices)


def test_npz_extends_given_buffer_and_overrides(tmp_path):
    buf = _filled()
    rv.to_npz(buf, tmp_path / "a.npz", compressed=True)
    other = rv.ReplayBuffer(1000, spec=buf.spec, seed=0)
    rv.from_npz(tmp_path / "a.npz", other)
    rv.from_npz(tmp_path / "a.npz", other)
    assert len(other) == 200
    assert torch.equal(other.columns["action"][:200], torch.arange(150, 250).repeat(2))
    small = rv.from_npz(tmp_path / "a.npz", capacity=10, seed=5)
    assert small.capacity == 10 and small.seed == 5
    assert torch.equal(_stored(small)["action"], torch.arange(240, 250))


def test_npz_priorities_into_other_buffers(tmp_path):
    buf = _filled(rv.Prioritized(alpha=0.6, eps=1e-3))
    batch = buf.sample(40)
    buf.update_priorities(batch.indices, torch.rand(40) * 5)
    rv.to_npz(buf, tmp_path / "p.npz")
    # Another alpha: the priorities come back through update_priorities (p = q^(1/alpha) - eps).
    other = rv.from_npz(tmp_path / "p.npz", sampler=rv.Prioritized(alpha=0.5, eps=1e-3))
    p_old = buf.priorities()[torch.from_numpy(buf._slots_of(fifo_key(np.arange(150, 250), 100)))]
    p_new = other.priorities()[:100]
    want = (p_old ** (1 / 0.6) - 1e-3 + 1e-3) ** 0.5
    assert torch.allclose(p_new, want, rtol=1e-4)
    # Into a prioritized buffer that already holds items: the same stored priorities.
    full = rv.ReplayBuffer(300, spec=buf.spec, sampler=rv.Prioritized(alpha=0.6, eps=1e-3))
    full.extend(obs=np.zeros((10, 3), np.float32), action=np.arange(10),
                half=torch.zeros(10, dtype=torch.bfloat16))
    rv.from_npz(tmp_path / "p.npz", full)
    assert torch.allclose(full.priorities()[10:110], p_old, rtol=1e-6)  # exact when scales agree
    # Into a uniform buffer: items only.
    uni = rv.from_npz(tmp_path / "p.npz", sampler=rv.Uniform())
    assert torch.equal(_stored(uni)["action"], torch.arange(150, 250))


def test_npz_round_trip_episode_buffer_after_wrap(tmp_path):
    buf = _episode_buffer()
    assert buf._core.written > buf.capacity
    rv.to_npz(buf, tmp_path / "e.npz")
    back = rv.from_npz(tmp_path / "e.npz")
    assert type(back) is rv.EpisodeBuffer and back.num_envs == 3 and back.capacity == 120
    _same(_stored(back), _stored(buf))
    # Episode boundaries come back (the oldest rows may continue an overwritten episode):
    # the saved buffer itself, same keys, same flags, same episodes, same draws.
    keys = fifo_key(np.arange(180, 300), 120, 3)
    old_flags = buf._table.state_view("episodes.row_flags")[buf._slots_of(keys)]
    new_flags = back._table.state_view("episodes.row_flags")[back._slots_of(keys)]
    assert np.array_equal(old_flags, new_flags)
    assert minari_io.stored_episodes(buf) == minari_io.stored_episodes(back)
    b1, b2 = buf.sample(64, n_step=3), back.sample(64, n_step=3)
    assert torch.equal(b1.indices, b2.indices) and torch.equal(b1["return"], b2["return"])
    # Into a buffer of its own settings but renumbered (capacity given): flags come along
    # under the new keys, 180 insertions lower.
    again = rv.from_npz(tmp_path / "e.npz", capacity=120)
    moved = [(e, fifo_key(fifo_insertion(np.array(ks), 120, 3) - 180, 120, 3).tolist())
             for e, ks in minari_io.stored_episodes(buf)]
    assert moved == minari_io.stored_episodes(again)


def test_plain_user_npz(tmp_path):
    path = tmp_path / "user.npz"
    obs = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    np.savez(path, obs=obs, action=np.arange(50), done=np.zeros(50, bool))
    buf = rv.from_npz(path)
    assert buf.capacity == 50 and len(buf) == 50
    assert buf.spec["obs"] == rv.Field("float32", (4,)) and buf.spec["done"].dtype == "bool"
    assert torch.equal(buf.columns["obs"], torch.from_numpy(obs))
    # As episodes: rows in key order (step t of env e at t * num_envs + e).
    np.savez(path, obs=obs, action=np.arange(50), reward=np.ones(50, np.float32),
             terminated=np.arange(50) % 10 == 9, truncated=np.zeros(50, bool))
    ep = rv.from_npz(path, num_envs=2, capacity=60)
    assert ep.num_envs == 2 and len(ep) == 50
    assert torch.equal(ep.columns["action"][:25], torch.arange(0, 50, 2))
    # A ReplayBuffer's file read as episodes.
    rv.to_npz(rv.from_npz(path), tmp_path / "rb.npz")
    ep2 = rv.from_npz(tmp_path / "rb.npz", num_envs=2, capacity=60)
    assert type(ep2) is rv.EpisodeBuffer
    _same(_stored(ep2), _stored(ep))


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        rv.from_npz(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        rv.from_npz(junk)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        rv.from_npz(tmp_path / "one.npy")
    np.savez(tmp_path / "ragged.npz", a=np.zeros(3), b=np.zeros(4))
    with pytest.raises(ValueError, match="differ in length"):
        rv.from_npz(tmp_path / "ragged.npz")
    np.savez(tmp_path / "scalar.npz", a=np.float32(1))
    with pytest.raises(ValueError, match="scalar"):
        rv.from_npz(tmp_path / "scalar.npz")
    np.savez(tmp_path / "meta.npz", a=np.zeros(3), __reverie__=np.array("{not json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        rv.from_npz(tmp_path / "meta.npz")
    # Truncated archive.
    good = tmp_path / "good.npz"
    rv.to_npz(_filled(), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        rv.from_npz(cut)
    # A spec that does not fit the given buffer: refused, the buffer unchanged.
    other = rv.ReplayBuffer(10, spec={"obs": ("float32", (5,))})
    with pytest.raises(ValueError, match="do not match"):
        rv.from_npz(good, other)
    assert len(other) == 0
    # EpisodeBuffer: rows must be whole steps.
    np.savez(tmp_path / "odd.npz", obs=np.zeros((5, 2), np.float32), action=np.zeros(5),
             reward=np.zeros(5, np.float32), terminated=np.zeros(5, bool),
             truncated=np.zeros(5, bool))
    with pytest.raises(ValueError, match="whole steps"):
        rv.from_npz(tmp_path / "odd.npz", rv.EpisodeBuffer(10, num_envs=2))


# ---- Minari --------------------------------------------------------------------------------

@pytest.fixture
def minari_path(tmp_path, monkeypatch):
    pytest.importorskip("minari")
    pytest.importorskip("h5py")  # minari's default storage
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari's metadata recommendations
        yield tmp_path / "minari"


def _episodes_of(ds):
    return [(np.asarray(ep.observations), np.asarray(ep.actions), np.asarray(ep.rewards),
             np.asarray(ep.terminations), np.asarray(ep.truncations),
             np.asarray(ep.infos["logp"])) for ep in ds.iterate_episodes()]


def _assert_same_episodes(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert u.dtype == v.dtype and np.array_equal(u, v)


def test_minari_round_trip(minari_path):
    buf = _episode_buffer(num_envs=3, capacity=300, steps=150)
    expected = minari_io.stored_episodes(buf)
    ds = rv.to_minari(buf, "reverie/test-v0")
    assert ds.total_episodes == len(expected) > 5
    assert (minari_path / "reverie").is_dir()
    episodes = _episodes_of(ds)
    rows = _stored(buf)
    for (env, keys), (obs, action, reward, term, trunc, logp) in zip(expected, episodes):
        ids = fifo_insertion(np.array(keys), 300, 3)  # step t of env e: insertion 3t + e
        assert all(i % 3 == env for i in ids)
        idx = torch.from_numpy(ids) - (buf._core.written - len(rows["obs"]))
        assert np.array_equal(obs, rows["obs"][idx].numpy())
        assert np.array_equal(action, rows["action"][idx[:-1]].numpy())
        assert np.array_equal(reward, rows["reward"][idx[:-1]].numpy())
        assert np.array_equal(logp, rows["logp"][idx].numpy())
        assert (term | trunc)[-1] and not (term | trunc)[:-1].any()

    # One stream: the same episodes in the same order.
    one = rv.from_minari("reverie/test-v0", info_fields=["logp"], seed=1)
    assert one.num_envs == 1
    _assert_same_episodes(_episodes_of(rv.to_minari(one, "reverie/one-v0")), episodes)
    # Three streams: the same episodes (dealt to streams, so in another order); the filling
    # of shorter streams is a running episode, not exported.
    three = rv.from_minari(ds, num_envs=3, info_fields=["logp"], seed=1)
    assert three.num_envs == 3 and len(minari_io.stored_episodes(three)) == len(episodes)
    again = _episodes_of(rv.to_minari(three, "reverie/three-v0"))
    key = lambda ep: ep[0].tobytes()  # noqa: E731
    _assert_same_episodes(sorted(again, key=key), sorted(episodes, key=key))


def test_minari_n_step_samples_match_episodes(minari_path):
    buf = _episode_buffer(num_envs=2, capacity=400, steps=200, seed=7)
    ds = rv.to_minari(buf, "reverie/nstep-v0")
    episodes = _episodes_of(ds)
    one = rv.from_minari(ds, seed=0)
    where = {}  # key -> (episode, step)
    n_row = 0
    for i, ep in enumerate(episodes):
        for t in range(len(ep[1]) + 1):
            where[fifo_key(n_row, one.capacity)] = (i, t)
            n_row += 1
    gamma, n = 0.9, 3
    batch = one.sample(512, n_step=n, gamma=gamma)
    for b in range(512):
        i, t = where[int(batch.indices[b])]
        obs, _, reward, term, trunc, _ = episodes[i]
        assert t < len(reward)  # never the final-observation row
        g, disc, m = 0.0, 1.0, 0
        for s in range(n):
            j = t + s
            g += disc * float(reward[j])
            disc *= gamma
            m = s + 1
            if term[j]:
                disc = 0.0
                break
            if trunc[j]:
                break
        assert np.array_equal(batch.obs[b].numpy(), obs[t])
        assert np.array_equal(batch.next_obs[b].numpy(), obs[t + m])
        assert batch["return"][b].item() == pytest.approx(g, rel=1e-6)
        assert batch.discount[b].item() == pytest.approx(disc, rel=1e-6)


def test_minari_errors(minari_path):
    empty = rv.EpisodeBuffer(10, spec={"obs": ("float32", (2,)), "action": ("int64", ()),
                                       "reward": ("float32", ()), "terminated": ("bool", ()),
                                       "truncated": ("bool", ())})
    with pytest.raises(ValueError, match="no complete episode"):
        rv.to_minari(empty, "reverie/empty-v0")
    buf = _episode_buffer()
    with pytest.raises(ValueError, match="action field 'act'"):
        rv.to_minari(buf, "reverie/x-v0", action="act")
    with pytest.raises(TypeError):
        minari_io.stored_episodes(rv.ReplayBuffer(10))
