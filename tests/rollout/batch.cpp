// The rollout batch: mask from lengths, and every documented validation error.
// (A data container, not an objective: there is no gradient to check by FD or torch.)
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/rollout/batch.hpp>

#include <cmath>
#include <limits>
#include <vector>

using rlpo::Index;
using rlpo::Mat;
using rlpo::rollout::Groups;
using rlpo::rollout::RolloutBatch;

namespace {
template <class S>
RolloutBatch<S> good_batch() {
    RolloutBatch<S> b;
    b.groups = Groups::equal(4, 2);
    b.mask = rlpo::rollout::response_mask<S>(std::vector<int>{3, 1, 0, 4}, 4);
    b.rewards = Mat<S>::Zero(4, 2);
    b.rewards << 1, 0.5, 0, 0.25, 1, 1, 0, 0;
    return b;
}
}  // namespace

TEMPLATE_TEST_CASE("rollout batch: response_mask and lengths", "[rollout][batch]", float, double) {
    using S = TestType;
    const Mat<S> m = rlpo::rollout::response_mask<S>(std::vector<int>{3, 0, 5}, 5);
    Mat<S> expect(3, 5);
    expect << 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1;
    CHECK(m == expect);
    CHECK(rlpo::rollout::response_lengths(m) == std::vector<double>{3, 0, 5});
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::rollout::response_mask<S>(std::vector<int>{2, 6}, 5),
        "rollout::response_mask(): lengths: response 1 has length 6, beyond [0, T = 5]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::rollout::response_mask<S>(std::vector<int>{-1}, 5),
                                    "lengths: response 0 has length -1");
    // floating lengths: whole numbers work; NaN or 1e30 are errors, not a cast to an integer
    CHECK(rlpo::rollout::response_mask<S>(std::vector<double>{3, 0, 5}, 5) == expect);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::rollout::response_mask<S>(std::vector<double>{2, std::nan("")}, 5),
        "rollout::response_mask(): lengths: entry 1 is not a whole number in range, given nan");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::rollout::response_mask<S>(std::vector<double>{1e30}, 5),
                                    "lengths: entry 0 is not a whole number in range");
}

TEMPLATE_TEST_CASE("rollout batch: a good batch validates; masked garbage is never read",
                   "[rollout][batch]", float, double) {
    using S = TestType;
    auto b = good_batch<S>();
    CHECK_NOTHROW(b.validate());
    b.old_logp = Mat<S>::Constant(4, 4, S(-1));
    b.old_logp(1, 3) = std::numeric_limits<S>::quiet_NaN();  // masked (length 1)
    b.ref_logp = b.old_logp;
    b.values = Mat<S>::Zero(4, 4);
    b.values(2, 0) = std::numeric_limits<S>::quiet_NaN();  // empty response
    b.token_rewards = Mat<S>::Zero(4, 4);
    b.truncated = {false, false, false, true};
    CHECK_NOTHROW(b.validate());
    CHECK(b.num_responses() == 4);
    CHECK(b.max_length() == 4);
    CHECK(b.num_rewards() == 2);
    CHECK(b.reward(1)(0) == S(0.5));
}

TEMPLATE_TEST_CASE("rollout batch: bad input gives the documented error",
                   "[rollout][batch][bad-input]", float, double) {
    using S = TestType;
    const S nan = std::numeric_limits<S>::quiet_NaN();
    {  // groups out of order / of size 0 are rejected when built
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::from_ids(std::vector<int>{0, 0, 1, 0}),
                                        "group ids out of order");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::from_offsets({0, 2, 2, 4}), "groups of size 0");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::equal(4, 0), "group_size: must be > 0");
    }
    {
        auto b = good_batch<S>();
        b.groups = Groups::equal(6, 2);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            b.validate(), "rollout::validate(): groups: cover 6 responses, but the batch has 4");
    }
    {
        auto b = good_batch<S>();
        b.rewards(2, 1) = nan;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(b.validate(), "rewards: nan at response 2, component 1");
        b.rewards(2, 1) = std::numeric_limits<S>::infinity();
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(b.validate(), "rewards: inf at response 2, component 1");
    }
    {
        auto b = good_batch<S>();
        b.rewards = Mat<S>::Zero(3, 1);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(b.validate(), "rewards: expected shape [4, K >= 1]");
        b.rewards = Mat<S>::Zero(4, 0);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(b.validate(), "rewards: expected shape [4, K >= 1]");
    }
    {
        auto b = good_batch<S>();
        b.mask(0, 0) = S(-1);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(b.validate(), "mask: entries must be finite and >= 0");
    }
    for (const char* field : {"token_rewards", "values", "old_logp", "ref_logp"}) {
        INFO(field);
        auto b = good_batch<S>();
        Mat<S>& x = std::string(field) == "token_rewards" ? b.token_rewards
                    : std::string(field) == "values"      ? b.values
                    : std::string(field) == "old_logp"    ? b.old_logp
                                                          : b.ref_logp;
        x = Mat<S>::Zero(4, 3);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            b.validate(),
            std::string(field) + ": expected shape [4, 4] (same as mask), given [4, 3]");
        x = Mat<S>::Zero(4, 4);
        x(3, 2) = nan;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            b.validate(), std::string(field) + ": NaN at [3, 2] under a non-zero mask");
    }
    {
        auto b = good_batch<S>();
        b.truncated = {true};
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(b.validate(), "truncated: expected 4 entries");
    }
}
