# Builds and runs tests/packaging/consumer against veil. Invoked by ctest as
#   cmake -DMODE=find_package|add_subdirectory -DVEIL_SOURCE_DIR=... -DVEIL_BINARY_DIR=...
#         -DWORK_DIR=... [-DGENERATOR=... -DBUILD_TYPE=... -DCXX_COMPILER=... -DCXX_FLAGS=...]
#         -P run_consumer.cmake
# find_package: installs the configured veil build (VEIL_BINARY_DIR) into WORK_DIR/prefix first.
# add_subdirectory: the consumer pulls in VEIL_SOURCE_DIR itself. Any failing step fails the test.
cmake_minimum_required(VERSION 3.20)

foreach(required IN ITEMS MODE VEIL_SOURCE_DIR VEIL_BINARY_DIR WORK_DIR)
  if(NOT DEFINED ${required})
    message(FATAL_ERROR "run_consumer.cmake: -D${required}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()

# run(<step> <command...>): runs the command, echoes its output, stops the test if it fails.
function(run step)
  message(STATUS "[${MODE}] ${step}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  message("${output}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "[${MODE}] ${step} failed (${result})")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
if(GENERATOR)
  list(APPEND consumer_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND consumer_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(CXX_FLAGS)
  list(APPEND consumer_args "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
endif()

if(MODE STREQUAL "find_package")
  run("install veil" ${CMAKE_COMMAND} --install "${VEIL_BINARY_DIR}" --config ${BUILD_TYPE} --prefix "${WORK_DIR}/prefix")
  list(APPEND consumer_args -DVEIL_CONSUMER_MODE=find_package "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
elseif(MODE STREQUAL "add_subdirectory")
  list(APPEND consumer_args -DVEIL_CONSUMER_MODE=add_subdirectory "-DVEIL_SOURCE_DIR=${VEIL_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer.cmake: MODE must be find_package or add_subdirectory, got '${MODE}'")
endif()

set(consumer_source "${CMAKE_CURRENT_LIST_DIR}/consumer")
run("configure consumer" ${CMAKE_COMMAND} -S "${consumer_source}" -B "${WORK_DIR}/build" ${consumer_args})
run("build consumer" ${CMAKE_COMMAND} --build "${WORK_DIR}/build" --config ${BUILD_TYPE})
find_program(consumer_program consumer PATHS "${WORK_DIR}/build" "${WORK_DIR}/build/${BUILD_TYPE}" NO_DEFAULT_PATH)
if(NOT consumer_program)
  message(FATAL_ERROR "[${MODE}] the consumer program was not built")
endif()
run("run consumer" "${consumer_program}")
