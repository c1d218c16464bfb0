# What the libtorch found by find_package(Torch) brings for GPUs: sets RLHF_TORCH_CUDA (ON for a
# CUDA build of libtorch) and, for those, makes NCCL's header visible and keeps libtorch_cuda linked.
#   - PyTorch wheels export USE_C10D_NCCL with torch_cuda, and c10d's ProcessGroupNCCL.hpp includes
#     <nccl.h>, which the wheel leaves to the nvidia-nccl package (site-packages/nvidia/nccl/include)
#     or the CUDA toolkit; without it, policy/runtime/distributed.cpp builds without NCCL (multi-GPU data
#     parallelism then fails with a named error).
#   - With --as-needed linkers (Ubuntu's default) an executable that calls nothing in
#     libtorch_cuda.so directly drops it, CUDA never registers and torch::cuda::is_available() says
#     false: link with --no-as-needed.
set(RLHF_TORCH_CUDA OFF)
if(TORCH_CUDA_LIBRARIES OR TARGET torch_cuda)
  set(RLHF_TORCH_CUDA ON)
endif()
message(STATUS "libtorch ${Torch_VERSION} at ${Torch_DIR}: CUDA ${RLHF_TORCH_CUDA}")
if(RLHF_WITH_CUDA AND NOT RLHF_TORCH_CUDA)
  message(FATAL_ERROR "RLHF_WITH_CUDA=ON but the libtorch at ${Torch_DIR} has no CUDA support; "
                      "point Torch_DIR or CMAKE_PREFIX_PATH at a CUDA build (a PyTorch wheel's "
                      "torch/share/cmake/Torch)")
endif()
if(RLHF_TORCH_CUDA)
  add_link_options("LINKER:--no-as-needed")
  set(_rlhf_nccl_hints "")
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -c
              "import os, nvidia.nccl as m; print(os.path.join(list(m.__path__)[0], 'include'))"
      OUTPUT_VARIABLE _rlhf_nccl_py OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    list(APPEND _rlhf_nccl_hints ${_rlhf_nccl_py})
  endif()
  find_path(RLHF_NCCL_INCLUDE_DIR nccl.h
            HINTS ${_rlhf_nccl_hints} $ENV{NCCL_HOME}/include ${CUDAToolkit_INCLUDE_DIRS}
                  /usr/local/cuda/include)
  if(RLHF_NCCL_INCLUDE_DIR)
    include_directories(SYSTEM ${RLHF_NCCL_INCLUDE_DIR})
    message(STATUS "nccl.h: ${RLHF_NCCL_INCLUDE_DIR} (NCCL data parallelism on)")
  else()
    message(STATUS "nccl.h not found: multi-GPU data parallelism (NCCL) is off")
  endif()
endif()
