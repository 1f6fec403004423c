// Filters: DAPO dynamic sampling and truncated-completion masking; properties and bad input
// (the rules are selections, so the reference is enumeration of the definition).
#include "support/catch.hpp"
#include "support/checks.hpp"

#include "rollout/common.hpp"

#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/filters.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
using rlpo::rollout::DynamicSamplingOptions;
using rlpo::rollout::Groups;
namespace rr = rlpo::rollout;

TEST_CASE("dynamic sampling keeps exactly the groups with reward variance", "[rollout][filters]") {
    for (std::uint64_t seed : {1, 2, 3, 4}) {
        const auto b = rollout_test::grouped_batch(seed, 12, 5);
        for (const auto& o : {DynamicSamplingOptions{}, DynamicSamplingOptions::verl()}) {
            const auto sel = rr::dynamic_sampling_filter(b.scores, b.groups, o);
            // reference: by definition, a group is informative iff max > min (DAPO: 0 < #correct < G)
            std::vector<Index> groups, responses;
            for (Index g = 0; g < b.groups.num_groups(); ++g) {
                const Vec<double> sg = b.scores.segment(b.groups.begin(g), b.groups.size(g));
                const bool keep =
                    b.groups.size(g) == 1 ? o.keep_singletons : sg.maxCoeff() > sg.minCoeff();
                if (!keep) continue;
                groups.push_back(g);
                for (Index k = b.groups.begin(g); k < b.groups.end(g); ++k) responses.push_back(k);
            }
            CHECK(sel.kept_groups == groups);
            CHECK(sel.kept_responses == responses);
            CHECK(sel.num_dropped_groups ==
                  b.groups.num_groups() - static_cast<Index>(groups.size()));
            CHECK(sel.groups.num_groups() == static_cast<Index>(groups.size()));
            CHECK(sel.groups.num_responses() == static_cast<Index>(responses.size()));
            for (std::size_t k = 0; k < groups.size(); ++k)
                CHECK(sel.groups.size(static_cast<Index>(k)) == b.groups.size(groups[k]));
            // after the filter no kept group (of size > 1) has all-zero GRPO advantages
            const Mat<double> kept = rr::select_rows(b.scores, sel.kept_responses);
            const Vec<double> a = rr::grpo_advantages(Vec<double>(kept.col(0)), sel.groups);
            for (Index g = 0; g < sel.groups.num_groups(); ++g)
                if (sel.groups.size(g) > 1)
                    CHECK(a.segment(sel.groups.begin(g), sel.groups.size(g)).cwiseAbs().maxCoeff() >
                          0);
        }
    }
    // the fixed groups of the batch: singleton (g1) and all-equal (g2) are dropped by default
    const auto b = rollout_test::grouped_batch(9);
    const auto sel = rr::dynamic_sampling_filter(b.scores, b.groups);
    CHECK(std::find(sel.kept_groups.begin(), sel.kept_groups.end(), 1) == sel.kept_groups.end());
    CHECK(std::find(sel.kept_groups.begin(), sel.kept_groups.end(), 2) == sel.kept_groups.end());
    CHECK(std::find(sel.kept_groups.begin(), sel.kept_groups.end(), 3) != sel.kept_groups.end());
    const auto v = rr::dynamic_sampling_filter(b.scores, b.groups, DynamicSamplingOptions::verl());
    CHECK(std::find(v.kept_groups.begin(), v.kept_groups.end(), 1) != v.kept_groups.end());
    // everything dropped: an empty, valid selection
    const auto none = rr::dynamic_sampling_filter(Vec<double>::Ones(4), Groups::equal(4, 2));
    CHECK(none.kept_groups.empty());
    CHECK(none.groups.num_groups() == 0);
    CHECK(none.num_dropped_groups == 2);
}

TEST_CASE("mask_truncated / truncated_by_length", "[rollout][filters]") {
    rlpo::testing::Generator gen(3);
    const Mat<float> m = gen.mask<float>(5, 8, 2, false);
    const Vec<float> len = rr::lengths_from_mask(m);
    const Vec<float> cut = rr::truncated_by_length(len, 8.0);
    const Mat<float> mt = rr::mask_truncated(m, cut);
    for (Index i = 0; i < 5; ++i) {
        CHECK(cut(i) == (len(i) >= 8 ? 1.0f : 0.0f));
        if (cut(i) != 0)
            CHECK(mt.row(i).isZero(0));
        else
            CHECK(mt.row(i) == m.row(i));
    }
    Vec<double> flags(3);
    flags << 0, 1, 0;
    const Mat<double> m3 = Mat<double>::Ones(3, 4);
    const Mat<double> out = rr::mask_truncated(m3, flags);
    CHECK(out.row(1).isZero(0));
    CHECK(out.row(0).sum() == 4);
    CHECK(out.row(2).sum() == 4);
}

TEST_CASE("filters: bad input gives the documented error", "[rollout][filters][bad-input]") {
    Vec<double> s(4);
    s << 1, 0, 1, 1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::dynamic_sampling_filter(s, Groups::equal(6, 3)),
        "rollout::dynamic_sampling_filter(): scores: has 4 entries, but the groups cover 6");
    s(1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::dynamic_sampling_filter(s, Groups::equal(4, 2)),
                                    "scores: NaN at response 1");
    const Mat<double> m = Mat<double>::Ones(3, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::mask_truncated(m, Vec<double>::Zero(2)),
        "rollout::mask_truncated(): truncated: expected 3 entries (rows of mask), given 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::truncated_by_length(Vec<double>::Constant(2, -1.0), 4.0),
        "rollout::truncated_by_length(): lengths: entries must be finite and >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::truncated_by_length(Vec<double>::Ones(2), 0.0),
                                    "max_length: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::select_rows(m, {0, 3}),
                                    "rollout::select_rows(): rows: index 3 out of range [0, 3)");
}
