// The heavy kernels, compiled once for the whole suite (core/kernel_instances.hpp): the test
// executables are built with RLPO_EXTERN_KERNELS and link these instances.
#define RLPO_INSTANTIATE_KERNELS
#include <rlpo/rlpo.hpp>
