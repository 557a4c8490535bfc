// The class-balanced reservoir writer ("class_balanced"): CBRS (Chrysakis & Moens, "Online
// Continual Learning from Imbalanced Data", ICML 2020), for a memory that must keep every
// class of an imbalanced stream.
//
// Settings: {"kind": "class_balanced", "label": "<integer scalar field>", "max_classes": N}
// (N >= 1, default 65536: the classes the table can tell apart; an item of one more class
// is refused with ValueError, nothing stored).
//
// The rule, for an offered item of class c (n_c: items of c offered so far, this one
// included; m_c: items of c held):
//  - while the table has room, it is stored;
//  - once full, if c is not full it replaces an item drawn uniformly from the largest class
//    (drawn uniformly among the classes tied for largest); a class is full once it is, or
//    has been since the table filled, a largest class;
//  - if c is full it replaces an item of its own class drawn uniformly, with probability
//    m_c / n_c, and is dropped otherwise.
// So the held counts approach the water-filling min(n_c, tau) of the stream, and within a
// class the held items are a uniform sample of those offered. Draws come from the
// counter-based generator keyed by the table's seed and the offer number alone (a batch
// decides exactly as the same offers one by one).
//
// Cost: O(1) expected per offered item whatever the number of classes, under the writer
// lock. No scan over classes or slots: classes are kept in an array ordered by held count,
// with the boundary of each count's block (a count changes by one per step, so a class moves
// by one swap); each class's slots are a dense list whose entries live in one hash table
// keyed by (class, position); labels map to classes through another. All of it is the
// table's region, persisted as it is, so a restored table decides exactly as the saved one.
// Not with max_times_sampled (removals would unbalance what the rule keeps).
//
// Quotas ("quotas", the same machinery): settings {"kind": "quotas", "group": "<integer
// scalar field>", "max_groups": N}. Equal shares of one memory as groups (tasks,
// experiences) arrive, each group keeping its newest items: while there is room everything
// is kept; once full, an item of a group below its share (not full, as above) takes the
// oldest item of the largest group (uniformly among those tied), and an item of a full group
// replaces its own group's oldest (a full group holding nothing, possible only while groups
// outnumber slots, takes a slot back as one below its share). So held counts are the water-filling min(n_g, tau)
// within 1: slots a small group cannot fill go to the others, and a new group always gets
// a slot while groups <= slots (Avalanche's ExperienceBalancedBuffer gives a group 0 slots
// once groups outnumber slots per group). Each group's slots are a ring of list positions
// from its head, so "oldest" is O(1). Deterministic but for ties among largest groups (the
// same seeded draw as CBRS).
#pragma once

#include "reverie/locked_writer.h"

namespace reverie {

class ClassBalanced final : public LockedWriter {
 public:
  // fifo: the quotas rule (newest kept per group) rather than CBRS's reservoir per class.
  ClassBalanced(int64_t capacity, uint64_t seed, int label_field, DType dtype, int64_t max_classes,
                bool fifo = false);

  void CheckFieldUpdate(int field, const std::string& name) const override;
  void StateArrays(std::vector<StateArray>* out) override;
  void SaveScalars(ConfigValue* out) const override;

  // Classes seen, and per class its label, items held and items offered. O(1).
  int64_t classes() const { return state_->classes; }
  int64_t label(int64_t c) const { return labels_[c]; }
  int64_t held(int64_t c) const { return held_[c]; }
  int64_t offered(int64_t c) const { return offered_[c]; }
  // The largest held count (0 when empty). O(1).
  int64_t largest() const { return state_->classes > 0 ? held_[order_[0]] : 0; }

 protected:
  void Check(const WriteBatch& batch) const override;
  int64_t Decide(const WriteBatch& batch, int64_t i, int64_t offer, int64_t free_slot,
                 int64_t insertion) override;
  std::vector<size_t> DerivedSections() const override;
  void BindDerived(const std::vector<uint8_t*>& sections, bool fresh) override;
  void RestoreDerived(const ConfigValue& scalars, const Ring& stamps) override;

 private:
  struct State {
    int64_t classes;  // classes seen (their indices are 0 .. classes-1, in order of arrival)
  };
  struct Entry {      // one position of one class's slot list (key 0: empty)
    int64_t key;      // class * capacity + position + 1
    int64_t slot;
  };
  int64_t LabelOf(const WriteBatch& batch, int64_t i) const;
  // The class of `label` (-1 when unseen); Find() reads only, Intern() adds it.
  int64_t Find(int64_t label) const;
  int64_t Intern(int64_t label);
  // The block machinery: held_[c] +/- 1, keeping order_ sorted by held count, descending.
  void Grow(int64_t c);
  void Shrink(int64_t c);
  // Class c's slot list: position p's slot; append; remove position p (the last moves in).
  int64_t& Member(int64_t c, int64_t p);
  void Append(int64_t c, int64_t slot);
  void RemoveAt(int64_t c, int64_t p);
  void RemoveOldest(int64_t c);  // quotas: position 0 leaves, the head moves on
  void Erase(Entry* e);          // removes a hash-table entry (backward-shift deletion)
  int64_t KeyOf(int64_t c, int64_t p) const;  // the hash key of position p of c's list
  Entry* Probe(int64_t key) const;  // the entry of `key`, or the empty one where it would go
  bool IsFull(int64_t c);
  uint64_t Draw(int64_t offer, uint32_t lane) const;

  uint64_t seed_;
  int field_;
  DType dtype_;
  int64_t max_classes_;
  bool fifo_;
  uint64_t label_mask_ = 0;   // label hash table size - 1 (a power of two >= 2 * max_classes)
  uint64_t member_mask_ = 0;  // slot-list hash table size - 1 (a power of two >= 2 * capacity)
  State* state_ = nullptr;
  int64_t* labels_ = nullptr;    // [max_classes] label of class c
  int64_t* held_ = nullptr;      // [max_classes] m_c
  int64_t* offered_ = nullptr;   // [max_classes] n_c
  int64_t* full_ = nullptr;      // [max_classes] 1 once c has been a largest class (full)
  int64_t* where_ = nullptr;     // [max_classes] c's position in order_
  int64_t* order_ = nullptr;     // [max_classes] classes by held count, descending
  int64_t* above_ = nullptr;     // [capacity + 1] above_[k]: classes holding more than k
  int64_t* label_table_ = nullptr;  // [label_mask_ + 1] class + 1 (0: empty), by label hash
  int64_t* label_keys_ = nullptr;   // [label_mask_ + 1] the label of each entry
  Entry* members_ = nullptr;        // [member_mask_ + 1]
  int64_t* head_ = nullptr;         // [max_classes] quotas: the ring position of c's oldest
};

std::unique_ptr<Writer> MakeClassBalanced(const ConfigValue& settings, const TableContext& table);
std::unique_ptr<Writer> MakeQuotas(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
