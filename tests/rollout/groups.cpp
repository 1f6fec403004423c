// rlpo::rollout::Groups: construction from sizes, ids and offsets; bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/rollout/groups.hpp>

#include <vector>

using rlpo::Index;
using rlpo::rollout::Groups;

TEST_CASE("Groups: equal sizes, ids and offsets describe the same partition", "[rollout][groups]") {
    const Groups e = Groups::equal(12, 4);
    CHECK(e.num_groups() == 3);
    CHECK(e.num_responses() == 12);
    CHECK(e.offsets() == std::vector<Index>{0, 4, 8, 12});
    for (Index g = 0; g < 3; ++g) {
        CHECK(e.begin(g) == 4 * g);
        CHECK(e.size(g) == 4);
    }
    const Groups i = Groups::from_ids(std::vector<int>{7, 7, 7, 7, -1, -1, -1, -1, 3, 3, 3, 3});
    CHECK(i.offsets() == e.offsets());
    const Groups o = Groups::from_offsets({0, 4, 8, 12});
    CHECK(o.offsets() == e.offsets());
    // uneven groups and singletons
    const Groups u = Groups::from_ids(std::vector<long>{5, 2, 2, 9, 9, 9, 1});
    CHECK(u.num_groups() == 4);
    CHECK(u.offsets() == std::vector<Index>{0, 1, 3, 6, 7});
    CHECK(u.size(0) == 1);
    CHECK(u.size(2) == 3);
    // empty batches
    CHECK(Groups::equal(0, 4).num_groups() == 0);
    CHECK(Groups::equal(0, 4).num_responses() == 0);
    CHECK(Groups::from_ids(std::vector<int>{}).num_groups() == 0);
    // floating ids: whole numbers are ids; NaN, fractions and values beyond int64 are errors
    CHECK(Groups::from_ids(std::vector<double>{3, 3, 8}).num_groups() == 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        Groups::from_ids(std::vector<double>{0, std::nan("")}),
        "rollout::Groups::from_ids(): ids: entry 1 is not a whole number in range, given nan");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::from_ids(std::vector<double>{1e30}),
                                    "ids: entry 0 is not a whole number in range");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::from_ids(std::vector<float>{0.5f}),
                                    "ids: entry 0 is not a whole number in range, given 0.5");
    CHECK(Groups{}.num_groups() == 0);
    CHECK_NOTHROW(Groups::equal(8, 8).check_covers("f", 8));
}

TEST_CASE("Groups: bad input gives the documented error", "[rollout][groups][bad-input]") {
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        Groups::from_ids(std::vector<int>{0, 0, 1, 0}),
        "rollout::Groups::from_ids(): ids: group ids out of order: id 0 at response 3");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::from_offsets({0, 2, 2, 4}),
                                    "group 1 has size 0 (groups of size 0 are not allowed)");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::from_offsets({1, 2}), "offsets: must start at 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::equal(4, 0),
                                    "rollout::Groups::equal(): group_size: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::equal(5, 2),
                                    "num_responses: 5 is not a multiple of group_size 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(Groups::equal(8, 4).check_covers("rollout::f", 6),
                                    "groups: cover 8 responses, but the batch has 6");
}
