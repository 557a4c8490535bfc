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

// A partial partition: its non-empty subsets (at most k; the others are empty, implicitly).
struct Partial {
  std::vector<Subset> subsets;
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

// Largest minus smallest subset cost, the implicit empty subsets included.
double Spread(const std::vector<Subset>& s, int64_t k) {
  double lo = s[0].cost, hi = s[0].cost;
  for (const Subset& x : s) {
    lo = std::min(lo, x.cost);
    hi = std::max(hi, x.cost);
  }
  return static_cast<int64_t>(s.size()) < k ? hi : hi - lo;
}

// Karmarkar-Karp over `units` into k subsets (1 <= k <= units); `next` links sequences.
// Combining x and y pairs x's j-th costliest subset with y's j-th cheapest, where y's
// implicit empty subsets are its cheapest and x's its last: so a unit of cost 0 still counts
// as a subset of its own, and the result has min(k, units) non-empty subsets. Memory O(n).
std::vector<Subset> Differencing(const std::vector<Unit>& units, int64_t k, std::vector<int64_t>& next) {
  std::vector<Partial> pool(units.size() * 2);
  size_t made = 0;
  std::priority_queue<Partial*, std::vector<Partial*>, BySpread> heap;
  for (const Unit& u : units) {
    Partial& p = pool[made];
    p.subsets = {Subset{u.cost, u.tokens, u.head, u.tail}};
    p.spread = u.cost;
    p.id = static_cast<int64_t>(made++);
    heap.push(&p);
  }
  if (heap.empty()) return {};
  while (heap.size() > 1) {
    Partial* x = heap.top();
    heap.pop();
    Partial* y = heap.top();
    heap.pop();
    std::stable_sort(x->subsets.begin(), x->subsets.end(),
                     [](const Subset& s, const Subset& t) { return s.cost > t.cost; });  // costliest first
    std::stable_sort(y->subsets.begin(), y->subsets.end(),
                     [](const Subset& s, const Subset& t) { return s.cost < t.cost; });  // cheapest first
    const auto nx = static_cast<int64_t>(x->subsets.size()), ny = static_cast<int64_t>(y->subsets.size());
    const int64_t y_first = k - ny;  // position of y's first non-empty subset
    Partial& z = pool[made];
    z.subsets.reserve(static_cast<size_t>(std::min(k, nx + ny)));
    for (int64_t j = 0; j < k; ++j) {
      const Subset* a = j < nx ? &x->subsets[static_cast<size_t>(j)] : nullptr;
      const Subset* b = j >= y_first ? &y->subsets[static_cast<size_t>(j - y_first)] : nullptr;
      if (a == nullptr && b == nullptr) continue;
      Subset s = a != nullptr ? *a : Subset{};
      if (b != nullptr) Concat(&s, *b, next);
      z.subsets.push_back(s);
    }
    z.spread = Spread(z.subsets, k);
    z.id = static_cast<int64_t>(made++);
    std::vector<Subset>().swap(x->subsets);
    std::vector<Subset>().swap(y->subsets);
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
  // The smallest count from `from` up whose split keeps the budget: one by one for the first
  // kLinear counts, then in doubling steps (*exact false: the count found fits, a smaller
  // one past the linear stretch may too). A count of one unit each always fits. Each
  // attempt starts from the untouched links.
  auto Search = [&](int64_t from, bool* exact) {
    constexpr int64_t kLinear = 64;
    int64_t m = std::min(std::max<int64_t>(from, 1), rest_units), step = 1;
    for (int64_t tries = 0;; ++tries) {
      std::vector<int64_t> probe = next;
      if (m >= rest_units || fits(Differencing(rest, m, probe))) return m;
      if (tries >= kLinear) {
        step *= 2;
        *exact = false;
      }
      m = std::min(rest_units, m + step);
    }
  };
  if (k > 0) {
    REVERIE_CHECK(k <= std::max<int64_t>(count, 1), "cannot split ", count, groups ? " groups" : " sequences",
                  " into ", k, " non-empty micro-batches");
    const int64_t least = n_over + (rest_units > 0 ? 1 : 0);
    REVERIE_CHECK(k >= least, n_over, " units are longer than the token budget of ", max_tokens,
                  " (each takes a micro-batch of its own)", rest_units > 0 ? " and others fit it" : "",
                  ": ", k, " micro-batches cannot hold them; the smallest count that does is at least ", least);
    std::vector<int64_t> links = next;  // `next` stays untouched for the search below
    if (k > n_over) split = Differencing(rest, k - n_over, links);
    if (!fits(split)) {
      bool exact = true;
      const int64_t need = Search(k - n_over + 1, &exact);
      throw std::invalid_argument(internal::Concat(
          k, " micro-batches cannot keep the token budget of ", max_tokens, " (", total, " tokens in ",
          rest_units, " units that fit it); ", exact ? "the smallest count that does is " : "a count that does is ",
          need + n_over));
    }
    next.swap(links);
  } else if (rest_units > 0) {
    // From the lower bound: the tokens over the budget, and one micro-batch for each unit of
    // more than half the budget (no two of them fit together).
    int64_t halves = 0;
    for (const Unit& u : rest) halves += 2 * u.tokens > max_tokens;
    bool exact = true;
    const int64_t m = Search(std::max<int64_t>({1, (total + max_tokens - 1) / max_tokens, halves}), &exact);
    split = Differencing(rest, m, next);
  }
  for (const Unit& u : over) split.push_back(Subset{u.cost, u.tokens, u.head, u.tail});
  // Micro-batches with their sequences ascending (every one non-empty: counts are at most
  // the units).
  MicroBatchSplit out;
  out.starts.push_back(0);
  std::vector<int64_t> members;
  for (const Subset& s : split) {
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
