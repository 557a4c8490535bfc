#include "reverie/micro_batch.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>
#include <unordered_map>

#include "reverie/common.h"

namespace reverie {
namespace {

struct Unit {
  double cost = 0;
  int64_t tokens = 0;
  int64_t head = -1, tail = -1;  // its sequences, a linked list over `next`
};

// One subset of a partial partition: its totals and its units' sequences (a linked list).
struct Subset {
  double cost = 0;
  int64_t tokens = 0;
  int64_t head = -1, tail = -1;
};

struct Partial {
  std::vector<Subset> subsets;  // k of them
  double spread = 0;
  int64_t id = 0;  // order of making: ties go to the earlier
};

struct BySpread {
  bool operator()(const Partial* x, const Partial* y) const {
    if (x->spread != y->spread) return x->spread < y->spread;  // largest spread on top
    return x->id > y->id;
  }
};

void Concat(Subset* into, const Subset& from, std::vector<int64_t>& next) {
  into->cost += from.cost;
  into->tokens += from.tokens;
  if (from.head < 0) return;
  if (into->head < 0) {
    into->head = from.head;
  } else {
    next[static_cast<size_t>(into->tail)] = from.head;
  }
  into->tail = from.tail;
}

double Spread(const std::vector<Subset>& s) {
  double lo = s[0].cost, hi = s[0].cost;
  for (const Subset& x : s) {
    lo = std::min(lo, x.cost);
    hi = std::max(hi, x.cost);
  }
  return hi - lo;
}

// Karmarkar-Karp over `units` into k subsets (k >= 1); `next` links sequences.
std::vector<Subset> Differencing(const std::vector<Unit>& units, int64_t k, std::vector<int64_t>& next) {
  std::vector<Partial> pool(units.size() * 2 + 1);
  size_t made = 0;
  std::priority_queue<Partial*, std::vector<Partial*>, BySpread> heap;
  for (const Unit& u : units) {
    Partial& p = pool[made];
    p.subsets.assign(static_cast<size_t>(k), Subset{});
    p.subsets[0] = Subset{u.cost, u.tokens, u.head, u.tail};
    p.spread = u.cost;
    p.id = static_cast<int64_t>(made++);
    heap.push(&p);
  }
  if (heap.empty()) return std::vector<Subset>(static_cast<size_t>(k));
  while (heap.size() > 1) {
    Partial* x = heap.top();
    heap.pop();
    Partial* y = heap.top();
    heap.pop();
    auto by_cost = [](const Subset& s, const Subset& t) { return s.cost > t.cost; };
    std::stable_sort(x->subsets.begin(), x->subsets.end(), by_cost);  // costliest first
    std::stable_sort(y->subsets.begin(), y->subsets.end(),
                     [](const Subset& s, const Subset& t) { return s.cost < t.cost; });  // cheapest first
    Partial& z = pool[made];
    z.subsets = x->subsets;
    for (size_t j = 0; j < z.subsets.size(); ++j) Concat(&z.subsets[j], y->subsets[j], next);
    z.spread = Spread(z.subsets);
    z.id = static_cast<int64_t>(made++);
    x->subsets.clear();
    y->subsets.clear();
    heap.push(&z);
  }
  return heap.top()->subsets;
}

}  // namespace

MicroBatchSplit SplitMicroBatches(const int64_t* lengths, int64_t n, const int64_t* groups, int64_t k,
                                  int64_t max_tokens, double a) {
  REVERIE_CHECK(n >= 0, "the number of sequences must be >= 0, got ", n);
  REVERIE_CHECK(k >= 0, "the number of micro-batches must be >= 0 (0: as few as the token budget allows), got ", k);
  REVERIE_CHECK(max_tokens >= 0, "the token budget must be >= 0 (0: none), got ", max_tokens);
  REVERIE_CHECK(std::isfinite(a) && a >= 0, "the linear cost weight a must be finite and >= 0, got ", a);
  REVERIE_CHECK(k > 0 || max_tokens > 0, "give the number of micro-batches, a token budget, or both");
  for (int64_t i = 0; i < n; ++i) {
    REVERIE_CHECK(lengths[i] >= 0, "sequence ", i, " has length ", lengths[i], "; lengths must be >= 0");
  }
  // Units: sequences, or groups (in order of their first sequence).
  std::vector<int64_t> next(static_cast<size_t>(n), -1);
  std::vector<Unit> units;
  std::unordered_map<int64_t, size_t> unit_of;
  for (int64_t i = 0; i < n; ++i) {
    size_t u = units.size();
    if (groups != nullptr) {
      auto [it, fresh] = unit_of.emplace(groups[i], units.size());
      u = it->second;
      if (fresh) units.emplace_back();
    } else {
      units.emplace_back();
    }
    Unit& unit = units[u];
    const auto l = static_cast<double>(lengths[i]);
    unit.cost += a * l + l * l;
    unit.tokens += lengths[i];
    if (unit.head < 0) {
      unit.head = i;
    } else {
      next[static_cast<size_t>(unit.tail)] = i;
    }
    unit.tail = i;
  }
  const auto count = static_cast<int64_t>(units.size());
  // Oversize units (more tokens than the budget): one micro-batch each.
  std::vector<Unit> over, rest;
  for (const Unit& u : units) (max_tokens > 0 && u.tokens > max_tokens ? over : rest).push_back(u);
  const auto n_over = static_cast<int64_t>(over.size());
  int64_t total = 0;
  for (const Unit& u : rest) total += u.tokens;
  auto fits = [&](const std::vector<Subset>& s) {
    if (max_tokens == 0) return true;
    return std::all_of(s.begin(), s.end(), [&](const Subset& x) { return x.tokens <= max_tokens; });
  };
  std::vector<Subset> split;
  const int64_t rest_units = static_cast<int64_t>(rest.size());
  if (k > 0) {
    REVERIE_CHECK(k <= std::max<int64_t>(count, 1), "cannot split ", count, groups ? " groups" : " sequences",
                  " into ", k, " non-empty micro-batches");
    const int64_t least = n_over + (rest_units > 0 ? 1 : 0);
    REVERIE_CHECK(k >= least, n_over, " units are longer than the token budget of ", max_tokens,
                  " (each takes a micro-batch of its own)", rest_units > 0 ? " and others fit it" : "",
                  ": ", k, " micro-batches cannot hold them; the smallest count that does is at least ", least);
    std::vector<int64_t> scratch = next;
    if (k > n_over) split = Differencing(rest, k - n_over, next);
    if (!fits(split)) {
      int64_t need = k - n_over;
      for (;;) {
        ++need;
        std::vector<int64_t> probe = scratch;
        if (need > rest_units || fits(Differencing(rest, need, probe))) break;
      }
      throw std::invalid_argument(internal::Concat(
          k, " micro-batches cannot keep the token budget of ", max_tokens, " (", total, " tokens in ",
          rest_units, " units that fit it); the smallest count that does is ", need + n_over));
    }
  } else {
    int64_t m = std::max<int64_t>(1, (total + max_tokens - 1) / max_tokens);
    m = std::min<int64_t>(m, std::max<int64_t>(rest_units, 1));
    for (;; ++m) {
      std::vector<int64_t> probe = next;
      split = Differencing(rest, m, probe);
      if (fits(split) || m >= rest_units) {
        next.swap(probe);
        break;
      }
    }
    if (rest_units == 0) split.clear();
  }
  for (const Unit& u : over) split.push_back(Subset{u.cost, u.tokens, u.head, u.tail});
  // Micro-batches with their sequences ascending; empty ones (k > units never reaches here)
  // are dropped only when no count was given.
  MicroBatchSplit out;
  out.starts.push_back(0);
  std::vector<int64_t> members;
  for (const Subset& s : split) {
    if (k == 0 && s.head < 0) continue;
    members.clear();
    for (int64_t i = s.head; i >= 0; i = next[static_cast<size_t>(i)]) members.push_back(i);
    std::sort(members.begin(), members.end());
    out.order.insert(out.order.end(), members.begin(), members.end());
    out.starts.push_back(static_cast<int64_t>(out.order.size()));
    out.costs.push_back(s.cost);
    out.tokens.push_back(s.tokens);
  }
  return out;
}

}  // namespace reverie
