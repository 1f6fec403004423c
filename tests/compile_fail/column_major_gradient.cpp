// A column-major gradient destination (Eigen's default Eigen::MatrixXf) is rejected at compile
// time by one static_assert of core/result.hpp, not a page of template errors. Compiled by ctest
// twice: as is (must fail, with the static_assert's message and no other error) and with
// RLPO_COMPILE_OK (the row-major destinations beside it, which must compile).
#include <rlpo/core/result.hpp>

#include <vector>

int main() {
    std::vector<float> buf(12);
    rlpo::Mat<float> g(3, 4);
    const auto a = rlpo::write_to(g);
    const auto b = rlpo::add_to(rlpo::view(buf.data(), 3, 4), 0.5);
    const auto c = rlpo::write_to(g.middleRows(1, 2));
#ifndef RLPO_COMPILE_OK
    Eigen::MatrixXf col_major(3, 4);
    const auto d = rlpo::write_to(col_major);
    return static_cast<int>(a.rows + b.rows + c.rows + d.rows);
#else
    return static_cast<int>(a.rows + b.rows + c.rows) - 8;
#endif
}
