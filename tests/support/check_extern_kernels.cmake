# The kernels of core/kernel_instances.hpp stay out of a translation unit built with
# RLPO_EXTERN_KERNELS (ctest runs this with -P): the object file must reference the listed
# kernel (`U`) and define none of the code under it. Inputs: NM, OBJECT, CALLS (the listed
# kernel's name), UNDER (a function only the kernel's body instantiates).
cmake_minimum_required(VERSION 3.16)
execute_process(COMMAND ${NM} -C ${OBJECT} OUTPUT_VARIABLE syms RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} failed on ${OBJECT}")
endif()
string(REGEX MATCH " U [^\n]*${CALLS}<" referenced "${syms}")
string(REGEX MATCH " [TtWw] [^\n]*${UNDER}<" defined "${syms}")
if(NOT referenced)
  message(FATAL_ERROR "${OBJECT}: no reference to an external ${CALLS}")
endif()
if(defined)
  message(FATAL_ERROR "${OBJECT}: compiles ${UNDER} itself:${defined}")
endif()
message(STATUS "${OBJECT}: calls the external ${CALLS}, compiles no ${UNDER}")
