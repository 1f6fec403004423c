#pragma once
/// \file
/// Views and aliases for the two data layouts rlpo works on.
///
/// * token-level data is `[B, T]`: B sequences (rows), T positions (columns);
/// * vocabulary-level data is `[N, V]`: N token rows, V vocabulary entries.
///
/// Both are row-major, float or double. Objectives take `Eigen::MatrixBase<D>` arguments and
/// read them through `ConstMatRef<S>`, so an `Eigen::Map` over a trainer's own row-major buffer
/// is read in place, without a copy (a column-major or strided argument still works, through
/// a temporary copy made by `Eigen::Ref`).

#include <Eigen/Core>

#include <cstdint>
#include <type_traits>

namespace rlpo {

using Index = Eigen::Index;

/// Row-major dynamic matrix: the storage type of every `[B, T]` and `[N, V]` array in rlpo.
template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Column vector (per-sequence or per-row quantities, e.g. sequence scores).
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

/// Read-only view of a row-major matrix (no copy for row-major `Map`s and matrices).
template <class S>
using ConstMatRef = Eigen::Ref<const Mat<S>>;
/// Writable view of a row-major matrix (gradient buffers owned by the caller).
template <class S>
using MatRef = Eigen::Ref<Mat<S>>;
/// Read-only view of a vector.
template <class S>
using ConstVecRef = Eigen::Ref<const Vec<S>>;

/// Zero-copy views over a trainer's buffers.
template <class S>
using MatMap = Eigen::Map<Mat<S>>;
template <class S>
using ConstMatMap = Eigen::Map<const Mat<S>>;

/// Token-level names (`[B, T]`) and vocabulary-level names (`[N, V]`) for readability.
template <class S>
using TokenMatrix = Mat<S>;
template <class S>
using LogitMatrix = Mat<S>;

/// Wrap a raw row-major buffer of `rows × cols` scalars without copying.
template <class S>
inline ConstMatMap<S> view(const S* data, Index rows, Index cols) {
    return ConstMatMap<S>(data, rows, cols);
}
template <class S>
inline MatMap<S> view(S* data, Index rows, Index cols) {
    return MatMap<S>(data, rows, cols);
}

namespace detail {
/// The scalar type of an Eigen expression, restricted to the two rlpo supports.
template <class Derived>
using scalar_t = typename Eigen::internal::traits<Derived>::Scalar;

template <class S>
inline constexpr bool is_supported_scalar_v =
    std::is_same<S, float>::value || std::is_same<S, double>::value;

/// Accumulator type: sums are kept in double whatever the storage type.
using acc_t = double;
}  // namespace detail

}  // namespace rlpo
