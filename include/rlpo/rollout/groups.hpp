#pragma once
/// \file
/// Responses grouped by prompt (the G responses sampled for one prompt form a group).
///
/// Groups are contiguous runs of responses: group g holds responses [begin(g), end(g)).
/// Build them from equal sizes (`Groups::equal(N, G)`) or from per-response group ids
/// (`Groups::from_ids(ids)`): ids may be any integers, but each group's responses must be
/// contiguous — an id that reappears after another group started is an error ("group ids out
/// of order"), as is a group size of 0 or N not divisible by G. Floating ids must be whole
/// numbers (NaN, fractions and values beyond ±2^62 are errors).

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <unordered_set>
#include <vector>

namespace rlpo::rollout {

namespace detail {
/// Entry i of an "integer" input (group ids, lengths) as an int64: integral types as they are;
/// a floating entry must be finite, a whole number and within ±2^62, or the call throws naming
/// the input and the entry (a NaN or 1e30 converted to an integer would be undefined).
template <class Int>
inline std::int64_t integer_entry(const char* fn, const char* name, std::size_t i, Int x) {
    if constexpr (std::is_floating_point_v<Int>) {
        const auto v = static_cast<double>(x);
        RLPO_CHECK(std::isfinite(v) && v == std::floor(v) && std::abs(v) <= 4.611686018427388e18,
                   fn, name, ": entry ", i, " is not a whole number in range, given ", v);
        return static_cast<std::int64_t>(v);
    } else {
        static_assert(std::is_integral_v<Int>, "rlpo: expected integer (or floating) entries");
        return static_cast<std::int64_t>(x);
    }
}
}  // namespace detail

class Groups {
public:
    Groups() = default;

    /// N responses in groups of G consecutive responses.
    static Groups equal(Index num_responses, Index group_size) {
        RLPO_CHECK(group_size > 0, "rollout::Groups::equal", "group_size: must be > 0, given ",
                   group_size);
        RLPO_CHECK(num_responses >= 0 && num_responses % group_size == 0, "rollout::Groups::equal",
                   "num_responses: ", num_responses, " is not a multiple of group_size ",
                   group_size);
        Groups g;
        g.offsets_.clear();
        for (Index b = 0; b <= num_responses; b += group_size) g.offsets_.push_back(b);
        return g;
    }

    /// From one group id per response; each group must be a contiguous run.
    template <class Int>
    static Groups from_ids(const std::vector<Int>& ids) {
        Groups g;  // offsets_ starts as {0}
        std::unordered_set<std::int64_t> seen;
        std::int64_t prev = 0;
        for (std::size_t i = 0; i < ids.size(); ++i) {
            const std::int64_t id =
                detail::integer_entry("rollout::Groups::from_ids", "ids", i, ids[i]);
            const bool starts = i == 0 || id != prev;
            prev = id;
            if (starts) {
                RLPO_CHECK(seen.insert(id).second, "rollout::Groups::from_ids",
                           "ids: group ids out of order: id ", id, " at response ", i,
                           " reappears after another group (each group must be contiguous)");
                if (i > 0) g.offsets_.push_back(static_cast<Index>(i));
            }
        }
        if (!ids.empty()) g.offsets_.push_back(static_cast<Index>(ids.size()));
        return g;
    }

    /// From explicit offsets [0, o_1, …, N] (strictly increasing).
    static Groups from_offsets(std::vector<Index> offsets) {
        RLPO_CHECK(!offsets.empty() && offsets.front() == 0, "rollout::Groups::from_offsets",
                   "offsets: must start at 0");
        for (std::size_t k = 1; k < offsets.size(); ++k)
            RLPO_CHECK(offsets[k] > offsets[k - 1], "rollout::Groups::from_offsets",
                       "offsets: group ", k - 1, " has size ", offsets[k] - offsets[k - 1],
                       " (groups of size 0 are not allowed)");
        Groups g;
        g.offsets_ = std::move(offsets);
        return g;
    }

    Index num_groups() const { return static_cast<Index>(offsets_.size()) - 1; }
    Index num_responses() const { return offsets_.empty() ? 0 : offsets_.back(); }
    Index begin(Index g) const { return offsets_[static_cast<std::size_t>(g)]; }
    Index end(Index g) const { return offsets_[static_cast<std::size_t>(g) + 1]; }
    Index size(Index g) const { return end(g) - begin(g); }
    const std::vector<Index>& offsets() const { return offsets_; }

    /// Throws unless the groups cover exactly `n` responses.
    void check_covers(const char* function, Index n) const {
        RLPO_CHECK(num_responses() == n, function, "groups: cover ", num_responses(),
                   " responses, but the batch has ", n);
    }

private:
    std::vector<Index> offsets_{0};
};

}  // namespace rlpo::rollout
