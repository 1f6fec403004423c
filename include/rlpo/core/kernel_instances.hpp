#pragma once
/// \file
/// Separate compilation of the heaviest kernels (opt-in; header-only by default).
///
/// rlpo is header-only: every translation unit that calls a kernel compiles it. Most kernels
/// are cheap, but the dense divergences (`distill::divergence`, the named shorthands,
/// `penalties::vocab_divergence` and everything built on them) instantiate every divergence
/// kind's software pipeline for each scalar type: about 30 s of an optimising compiler per
/// translation unit that calls one. A program with several such translation units can compile
/// those kernels once instead:
///   * in every translation unit, define `RLPO_EXTERN_KERNELS` (e.g.
///     `target_compile_definitions(app PRIVATE RLPO_EXTERN_KERNELS)`): the kernels listed
///     with `RLPO_KERNEL_INSTANCE` are then declared `extern template`, so that translation
///     unit calls them instead of compiling them;
///   * in exactly one translation unit, define `RLPO_INSTANTIATE_KERNELS` before including
///     `<rlpo/rlpo.hpp>` (it wins over `RLPO_EXTERN_KERNELS`): that one compiles them (the
///     explicit instantiations), with the same compiler and flags as the others.
/// The code is the same template compiled with the same flags, so the results are the same
/// bit for bit; only where it is compiled changes. Scalar types other than the listed ones
/// (see each `RLPO_KERNEL_INSTANCE`) are compiled where they are used, as without the macros.
/// Translation units built for another instruction set (a different `-march`) must not share
/// the instances: compile one instantiating unit per set of flags.
///
/// A listed kernel is a function template declared without `inline`: an `extern template`
/// of an inline function does not stop GCC from compiling it for inlining.

#if defined(RLPO_INSTANTIATE_KERNELS)
/// An explicit instantiation of a heavy kernel (see the file comment): a definition in the
/// unit that defines `RLPO_INSTANTIATE_KERNELS`, a declaration under `RLPO_EXTERN_KERNELS`,
/// nothing otherwise.
#define RLPO_KERNEL_INSTANCE(...) template __VA_ARGS__;
#elif defined(RLPO_EXTERN_KERNELS)
#define RLPO_KERNEL_INSTANCE(...) extern template __VA_ARGS__;
#else
#define RLPO_KERNEL_INSTANCE(...)
#endif
