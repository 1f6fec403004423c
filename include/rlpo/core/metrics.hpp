#pragma once
/// \file
/// Named scalar metrics, named as verl/TRL name the same quantity (`pg_clipfrac`, `ppo_kl`, …).
///
/// Each metric is kept as a (sum, count) pair so that metrics of micro-batches and
/// data-parallel shards merge exactly: `a.merge(b)` adds sums and counts, and `value()` of the
/// merged metric is the mean over the whole mini-batch (what the trainer would have logged had
/// it seen the batch in one call). A metric that is not a mean (a coefficient, a count) is set
/// with count 1 and merges as a sum of counts, i.e. its value becomes the average of the
/// parts; name such metrics accordingly.

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace rlpo {

/// One metric: value = sum / (count + ε) (count 0 ⇒ value 0, the documented empty-mask
/// result). ε is 0 unless the objective was given a Normalizer with a `count_epsilon` (verl's
/// `masked_mean` adds 1e-8); metrics set as plain values never get one.
struct Metric {
    double sum = 0.0;
    double count = 0.0;
    double count_epsilon = 0.0;
    bool plain = false;  ///< set as a value (`Metrics::set`), not a mean
    double value() const { return count > 0 ? sum / (count + count_epsilon) : 0.0; }
};

/// An ordered list of named metrics (insertion order is report order).
class Metrics {
public:
    using Entry = std::pair<std::string, Metric>;

    /// Add `sum` over `count` items to the metric `name` (creating it if absent).
    void add(const std::string& name, double sum, double count) {
        Metric& m = slot(name);
        m.sum += sum;
        m.count += count;
    }
    /// Set `name` to a plain value (sum = value, count = 1), replacing any earlier entry.
    void set(const std::string& name, double value) { slot(name) = Metric{value, 1.0, 0.0, true}; }
    /// Give every mean metric the count ε (what `Normalizer::count_epsilon` asks for).
    Metrics& with_count_epsilon(double eps) {
        for (auto& e : entries_)
            if (!e.second.plain) e.second.count_epsilon = eps;
        return *this;
    }

    bool contains(const std::string& name) const { return find(name) != nullptr; }
    /// The value of `name`; throws std::out_of_range if it is not reported.
    double operator[](const std::string& name) const { return at(name).value(); }
    const Metric& at(const std::string& name) const {
        const Metric* m = find(name);
        if (!m) throw std::out_of_range("rlpo::Metrics: no metric named '" + name + "'");
        return *m;
    }
    /// Merge another set (micro-batch or shard of the same mini-batch): sums and counts add.
    Metrics& merge(const Metrics& other) {
        for (const auto& e : other.entries_) {
            const bool fresh = !contains(e.first);
            add(e.first, e.second.sum, e.second.count);
            if (fresh) {  // keep the part's ε and kind
                Metric& m = slot(e.first);
                m.count_epsilon = e.second.count_epsilon;
                m.plain = e.second.plain;
            }
        }
        return *this;
    }
    /// Prefix every name (e.g. "actor/") — verl logs under such prefixes.
    Metrics prefixed(const std::string& prefix) const {
        Metrics out;
        for (const auto& e : entries_) out.entries_.emplace_back(prefix + e.first, e.second);
        return out;
    }

    std::size_t size() const { return entries_.size(); }
    bool empty() const { return entries_.empty(); }
    auto begin() const { return entries_.begin(); }
    auto end() const { return entries_.end(); }

private:
    const Metric* find(const std::string& name) const {
        for (const auto& e : entries_)
            if (e.first == name) return &e.second;
        return nullptr;
    }
    Metric& slot(const std::string& name) {
        for (auto& e : entries_)
            if (e.first == name) return e.second;
        entries_.emplace_back(name, Metric{});
        return entries_.back().second;
    }
    std::vector<Entry> entries_;
};

}  // namespace rlpo
