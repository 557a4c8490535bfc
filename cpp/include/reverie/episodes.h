// Episodes in a replay buffer: per-env streams, n-step returns, frame stacks and sequence
// windows, computed at sample time from rows stored once.
//
// Streams. A buffer with num_envs = N stores the steps of N environments stepped together
// (a vectorized env): step t of env e is key t*N + e, so env e's rows are keys e, e+N, e+2N,
// ... and the next row of the same stream is always key + N, across the ring's wrap-around
// too. In memory each env's rows are adjacent (the ring is stream-major, ring.h), so a
// sequence is one run of rows (two where it wraps past the end of its stream's rows). A row is *present* while its slot's commit stamp holds its
// key (ring.h): rows not yet written and rows overwritten since both fail that test.
//
// Rows follow gymnasium's next-step autoreset. A row is (obs_t, action_t, reward_t,
// terminated_t, truncated_t); the next observation is the obs of the stream's next row. After
// a row that ended its episode, the stream's next row is the episode's *final-observation*
// row: its obs is the final observation and nothing else in it is a transition. The row
// after that starts the next episode. Each row's flags are fixed when it is written, from
// its own terminated/truncated values and the previous row's flags of its stream, so they
// stay right after that previous row has been overwritten.
//
// The logic below is written once as REVERIE_HD templates over a row source, so a device
// build runs exactly what the CPU build runs and tests.
#pragma once

#include <cstdint>
#include <vector>

#include "reverie/common.h"

namespace reverie {

// Bits of a row's flags byte.
enum RowFlag : uint8_t {
  kTerminated = 1,  // the step ended the episode in a terminal state (no bootstrap)
  kTruncated = 2,   // the step ended the episode by a time limit (bootstrap)
  kFinalRow = 4,    // the row holds its episode's final observation; not a transition
  kFirstRow = 8,    // the first row of an episode
};
// A stream's state before its first row: that row starts an episode.
inline constexpr uint8_t kStreamStart = 0x80;

REVERIE_HD bool EndsEpisode(uint8_t flags) { return (flags & (kTerminated | kTruncated)) != 0; }
REVERIE_HD bool IsTransition(uint8_t flags) { return (flags & kFinalRow) == 0; }

// The flags of a row written after a row with flags `prev` (kStreamStart for the stream's
// first row). O(1).
REVERIE_HD uint8_t RowFlagsAfter(uint8_t prev, bool terminated, bool truncated) {
  uint8_t f = 0;
  if (prev == kStreamStart || (prev & kFinalRow) != 0) f |= kFirstRow;
  if (prev != kStreamStart && (prev & kFinalRow) == 0 && EndsEpisode(prev)) {
    f |= kFinalRow;  // the row after an ending step holds the final observation
  } else {
    if (terminated) f |= kTerminated;
    if (truncated) f |= kTruncated;
  }
  return f;
}

// Which fields play which part. Field numbers are in spec order.
struct EpisodeConfig {
  int64_t num_envs = 0;  // 0: a plain buffer without episodes
  int reward = -1, terminated = -1, truncated = -1;
  std::vector<int> obs;  // stacked when frame_stack > 1, and given again as next_<name>
  int frame_stack = 1;

  bool enabled() const { return num_envs > 0; }
};

// A row's position: its key, its slot and the first slot of its stream's rows (the ring is
// stream-major, ring.h), stepped together so that walking a stream costs no division.
struct RowPos {
  int64_t key;
  int64_t slot;
  int64_t base;
};

// What a row source provides (see StoredRows in cpp/src/episode_sampling.cc):
//   RowPos Next(RowPos) / Prev(RowPos)   the same stream's next / previous row;
//   bool Present(RowPos)                 the row is written and not overwritten;
//   uint8_t Flags(RowPos), double Reward(RowPos)   of a present row.

// The rows of the frame stack of `row` (present), oldest first, into out[0..k); positions
// before the episode's first row repeat that row. Returns false when a needed row is no longer
// present (the oldest stored rows, or a row a writer just overwrote); out[] then still names
// stored slots (the oldest row found is repeated), so a copy from it stays in bounds. O(k).
template <typename Rows>
REVERIE_HD bool StackRows(const Rows& rows, RowPos row, int k, RowPos* out) {
  out[k - 1] = row;
  RowPos cur = row;
  bool complete = true;
  for (int m = k - 2; m >= 0; --m) {
    if (complete && (rows.Flags(cur) & kFirstRow) == 0) {
      const RowPos prev = rows.Prev(cur);
      if (rows.Present(prev)) {
        cur = prev;
      } else {
        complete = false;
      }
    }
    out[m] = cur;
  }
  return complete;
}

// The oldest row a frame stack of `row` reads (itself when k == 1), or key -1 when the stack
// is incomplete. O(k).
template <typename Rows>
REVERIE_HD RowPos StackBottom(const Rows& rows, RowPos row, int k) {
  RowPos cur = row;
  for (int m = 1; m < k && (rows.Flags(cur) & kFirstRow) == 0; ++m) {
    const RowPos prev = rows.Prev(cur);
    if (!rows.Present(prev)) return RowPos{-1, -1, -1};
    cur = prev;
  }
  return cur;
}

// An n-step return from a transition row `start`: rewards of up to n rows of its stream,
// stopping after a terminated row (discount 0), after a truncated row (bootstrap from its
// final-observation row) and at the write head (bootstrap from the newest row).
struct NStepResult {
  int steps = 0;          // rows summed; 0: no next row yet (not a valid start)
  double ret = 0.0;       // sum of gamma^i * reward_i
  double discount = 1.0;  // gamma^steps, or 0 after termination
  RowPos boot{-1, -1, -1};    // the row whose obs is the bootstrap observation
};

template <typename Rows>
REVERIE_HD NStepResult NStep(const Rows& rows, RowPos start, int n, double gamma) {
  NStepResult r;
  RowPos row = start;
  for (int i = 0; i < n; ++i) {
    const RowPos next = rows.Next(row);
    if (!rows.Present(next)) break;  // the write head
    const uint8_t f = rows.Flags(row);
    r.ret += r.discount * rows.Reward(row);
    r.discount *= gamma;
    r.steps = i + 1;
    row = next;
    if ((f & kTerminated) != 0) {
      r.discount = 0.0;
      break;
    }
    if ((f & kTruncated) != 0) break;
  }
  r.boot = row;
  return r;
}

// A sequence window: T = burn_in + length rows of `start`'s stream, position t at key
// start + (t - burn_in) * N. Fills slots[t] (-1: a zero row) and mask[t] (1: a transition of
// start's episode with a complete frame stack), and lo/hi: the oldest and newest rows read
// (stacks included), all present. With `drop`, returns false unless every learning position
// (t >= burn_in) is a transition of the episode. The start must be a present transition with
// a complete stack. O(T * k).
struct WindowResult {
  bool ok = false;
  RowPos lo{-1, -1, -1}, hi{-1, -1, -1};
};

template <typename Rows>
REVERIE_HD WindowResult SequenceWindow(const Rows& rows, RowPos start, int64_t burn_in,
                                       int64_t length, bool drop, int k, int64_t* slots,
                                       uint8_t* mask) {
  WindowResult w;
  const int64_t total = burn_in + length;
  for (int64_t t = 0; t < total; ++t) {
    slots[t] = -1;
    mask[t] = 0;
  }
  // Forward from the start: transitions until the episode ends or the data does.
  RowPos row = start;
  w.hi = start;
  bool transition = true;  // `row` is a transition row of the episode
  for (int64_t t = burn_in; t < total; ++t) {
    slots[t] = row.slot;
    mask[t] = transition ? 1 : 0;
    w.hi = row;
    if (!transition) break;  // the final-observation row is the episode's last
    const uint8_t f = rows.Flags(row);
    if (t + 1 == total) break;
    const RowPos next = rows.Next(row);
    if (!rows.Present(next)) break;
    transition = !EndsEpisode(f);
    row = next;
  }
  if (drop) {
    for (int64_t t = burn_in; t < total; ++t) {
      if (mask[t] == 0) return w;
    }
  }
  // Backward for the burn-in, within the episode and the stored rows.
  w.lo = StackBottom(rows, start, k);
  row = start;
  for (int64_t t = burn_in - 1; t >= 0; --t) {
    if ((rows.Flags(row) & kFirstRow) != 0) break;
    const RowPos prev = rows.Prev(row);
    if (!rows.Present(prev)) break;
    row = prev;
    const RowPos bottom = StackBottom(rows, row, k);
    if (bottom.key < 0) break;  // this and older rows lack frames: zeros
    slots[t] = row.slot;
    mask[t] = 1;
    w.lo = bottom;
  }
  w.ok = true;
  return w;
}

}  // namespace reverie
