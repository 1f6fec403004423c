#pragma once
// Shared helpers of the rollout tests: random grouped batches with degenerate groups.
#include <rlpo/rollout/groups.hpp>
#include <rlpo/testing/random.hpp>

#include <vector>

namespace rollout_test {

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;

/// A grouped batch: group sizes drawn from {1..max_size} plus fixed degenerate groups
/// (a singleton, an all-equal group, a binary group), scores of mixed kinds.
struct GroupedBatch {
    std::vector<Index> sizes;
    Mat<double> ids;     // N x 1 group ids
    Vec<double> scores;  // N
    rlpo::rollout::Groups groups;
    Index n() const { return scores.size(); }
};

inline GroupedBatch grouped_batch(std::uint64_t seed, Index num_groups = 9, Index max_size = 6) {
    rlpo::testing::Generator gen(seed);
    GroupedBatch b;
    std::vector<double> s;
    std::vector<Index> id;
    for (Index g = 0; g < num_groups; ++g) {
        Index n = gen.integer(2, max_size);
        if (g == 1) n = 1;  // singleton
        b.sizes.push_back(n);
        const double kind = gen.uniform();
        const double common = gen.normal();
        for (Index k = 0; k < n; ++k) {
            double v;
            if (g == 2)
                v = 0.7;  // all equal (not exactly representable)
            else if (g == 3)
                v = gen.uniform() < 0.5 ? 1.0 : 0.0;  // binary
            else if (kind < 0.3)
                v = gen.uniform() < 0.5 ? 1.0 : 0.0;
            else
                v = common + gen.normal() * 2.0;
            s.push_back(v);
            id.push_back(100 + 7 * g);  // arbitrary, increasing ids
        }
        if (g == 3) {  // make sure the binary group has both values
            s[s.size() - 1] = 1.0;
            s[s.size() - n] = 0.0;
        }
    }
    b.scores.resize(static_cast<Index>(s.size()));
    b.ids.resize(static_cast<Index>(s.size()), 1);
    for (std::size_t k = 0; k < s.size(); ++k) {
        b.scores(static_cast<Index>(k)) = s[k];
        b.ids(static_cast<Index>(k), 0) = static_cast<double>(id[k]);
    }
    b.groups = rlpo::rollout::Groups::from_ids(id);
    return b;
}

template <class S>
Vec<S> vec(const Vec<double>& v) {
    return v.cast<S>();
}
template <class S>
Mat<double> as_mat(const Vec<S>& v) {
    return v.template cast<double>();
}

}  // namespace rollout_test
