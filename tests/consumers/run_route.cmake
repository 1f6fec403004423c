# Build and run the consumer program through one packaging route (ctest runs this with -P).
# Inputs: ROUTE (installed | subdirectory | fetchcontent), RLPO_SOURCE_DIR, WORK_DIR, CXX_COMPILER.
cmake_minimum_required(VERSION 3.16)
set(here ${CMAKE_CURRENT_LIST_DIR})
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer route ${ROUTE}: command failed (${rc}): ${ARGN}")
  endif()
endfunction()

set(common -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
if(ROUTE STREQUAL "installed")
  run(${CMAKE_COMMAND} -S ${RLPO_SOURCE_DIR} -B ${WORK_DIR}/rlpo-build ${common}
      -DRLPO_BUILD_TESTS=OFF -DRLPO_BUILD_EXAMPLES=OFF -DRLPO_BUILD_BENCHMARKS=OFF -DRLPO_INSTALL=ON
      -DRLPO_BUILD_PYTHON=OFF)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/rlpo-build --prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} -S ${here}/installed -B ${WORK_DIR}/app ${common}
      -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  run(${CMAKE_COMMAND} -S ${here}/${ROUTE} -B ${WORK_DIR}/app ${common}
      -DRLPO_SOURCE_DIR=${RLPO_SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/app)
run(${WORK_DIR}/app/consumer)
message(STATUS "consumer route ${ROUTE}: OK")
