# Small helpers shared by every module's CMakeLists.txt. Warning flags (-Wall -Wextra, -Werror
# with RLHF_WERROR) are set for every target in the top-level CMakeLists.txt.

# One precompiled-header carrier for <torch/torch.h>; torch targets reuse it so the
# ~30 s header parse happens once per build, not once per target.
add_library(rlhf_torch_pch STATIC ${CMAKE_SOURCE_DIR}/cmake/torch_pch.cpp)
target_link_libraries(rlhf_torch_pch PUBLIC ${TORCH_LIBRARIES})
target_compile_options(rlhf_torch_pch PUBLIC -Wno-deprecated-declarations)
target_precompile_headers(rlhf_torch_pch PRIVATE <torch/torch.h>)

# rlhf_use_torch(target): link libtorch and reuse the torch precompiled header.
function(rlhf_use_torch target)
  target_link_libraries(${target} PUBLIC ${TORCH_LIBRARIES})
  target_compile_options(${target} PRIVATE -Wno-deprecated-declarations)
  target_precompile_headers(${target} REUSE_FROM rlhf_torch_pch)
endfunction()

# rlhf_add_module(name [TORCH] SOURCES ... DEPS ...)
function(rlhf_add_module name)
  cmake_parse_arguments(ARG "TORCH" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
  if(ARG_TORCH)
    rlhf_use_torch(${name})
  endif()
endfunction()

# rlhf_add_test(name [TORCH] [SLOW] SOURCES ... DEPS ...): a GoogleTest executable registered
# with CTest, labelled `unit` (or `slow`).
function(rlhf_add_test name)
  cmake_parse_arguments(ARG "TORCH;SLOW" "TIMEOUT" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} rlhf_test_main Threads::Threads)
  target_compile_definitions(${name} PRIVATE
      RLHF_SHARED_DATA_DIR="${RLHF_SHARED_DATA_DIR}"
      RLHF_BINARY_DIR="${CMAKE_BINARY_DIR}"
      RLHF_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  if(ARG_TORCH)
    rlhf_use_torch(${name})
  endif()
  set(label unit)
  if(ARG_SLOW)
    set(label slow)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(${name} PROPERTIES LABELS ${label} TIMEOUT ${ARG_TIMEOUT})
endfunction()
