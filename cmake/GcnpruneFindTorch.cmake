# gcnprune_find_torch(): find the libtorch of a pip torch wheel (CPU or CUDA build) or of a
# libtorch archive, on machines with or without a GPU / CUDA toolkit. Used by the project's
# CMakeLists.txt and by the installed gcnpruneConfig.cmake.
#
# Inputs (all optional): Torch_DIR, CMAKE_PREFIX_PATH (e.g. torch.utils.cmake_prefix_path),
#   GCNPRUNE_TORCH_DISCOVERY (auto|config|manual), CUDA_HOME / CUDA_PATH (environment) or
#   CUDA_TOOLKIT_ROOT_DIR / CUDAToolkit_ROOT (cache) for CUDA wheels.
# Results:
#   GCNPRUNE_TORCH_TARGETS          what to link (torch targets / libraries)
#   GCNPRUNE_TORCH_ROOT             the torch folder (holds lib/, include/, share/cmake/)
#   GCNPRUNE_TORCH_LIBRARY_DIR      ${GCNPRUNE_TORCH_ROOT}/lib (for RPATHs)
#   GCNPRUNE_TORCH_VERSION          e.g. 2.14.1
#   GCNPRUNE_TORCH_HAS_CUDA         ON when torch is a CUDA build (libtorch_cuda.so present)
#   GCNPRUNE_TORCH_DISCOVERY_USED   config (find_package(Torch)) or manual (imported by hand)
#   GCNPRUNE_PIP_CUDA_INCLUDE_DIRS  site-packages/nvidia/*/include of CUDA wheels (cuBLAS, cuSPARSE...)
#
# Why the manual path exists: TorchConfig.cmake of a CUDA wheel fails hard (FATAL_ERROR, not
# catchable) when no CUDA toolkit (nvcc) is installed, even though linking libtorch needs none.

macro(_gcnprune_locate_torch_config_dir)
  set(GCNPRUNE_TORCH_CONFIG_DIR "")
  if(Torch_DIR AND EXISTS "${Torch_DIR}/TorchConfig.cmake")
    set(GCNPRUNE_TORCH_CONFIG_DIR "${Torch_DIR}")
  else()
    foreach(_gcnprune_prefix IN LISTS CMAKE_PREFIX_PATH)
      foreach(_gcnprune_sub "Torch" "share/cmake/Torch")
        if(NOT GCNPRUNE_TORCH_CONFIG_DIR AND EXISTS "${_gcnprune_prefix}/${_gcnprune_sub}/TorchConfig.cmake")
          set(GCNPRUNE_TORCH_CONFIG_DIR "${_gcnprune_prefix}/${_gcnprune_sub}")
        endif()
      endforeach()
    endforeach()
  endif()
  if(NOT GCNPRUNE_TORCH_CONFIG_DIR)
    # Last resort: ask the Python on PATH where its torch lives.
    find_program(GCNPRUNE_PYTHON NAMES python3 python)
    if(GCNPRUNE_PYTHON)
      execute_process(
        COMMAND "${GCNPRUNE_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
        OUTPUT_VARIABLE _gcnprune_py_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
        RESULT_VARIABLE _gcnprune_py_rc ERROR_QUIET)
      if(_gcnprune_py_rc EQUAL 0 AND EXISTS "${_gcnprune_py_prefix}/Torch/TorchConfig.cmake")
        set(GCNPRUNE_TORCH_CONFIG_DIR "${_gcnprune_py_prefix}/Torch")
      endif()
    endif()
  endif()
  if(NOT GCNPRUNE_TORCH_CONFIG_DIR)
    message(FATAL_ERROR
      "gcnprune: cannot find libtorch. Pass "
      "-DCMAKE_PREFIX_PATH=\"$(python -c 'import torch;print(torch.utils.cmake_prefix_path)')\" "
      "or -DTorch_DIR=<torch>/share/cmake/Torch.")
  endif()
  get_filename_component(GCNPRUNE_TORCH_ROOT "${GCNPRUNE_TORCH_CONFIG_DIR}/../../.." ABSOLUTE)
endmacro()

# Points CUDA toolkit discovery at a real toolkit, and the CUDA libraries a slim toolkit lacks at
# the pip wheels' copies. Sets _gcnprune_cuda_toolkit_found.
macro(_gcnprune_cuda_hints)
  set(_gcnprune_cuda_toolkit_found OFF)
  set(_gcnprune_cuda_roots "")
  foreach(_gcnprune_hint "${CUDAToolkit_ROOT}" "${CUDA_TOOLKIT_ROOT_DIR}" "$ENV{CUDA_HOME}"
                         "$ENV{CUDA_PATH}" "/usr/local/cuda")
    if(_gcnprune_hint)
      list(APPEND _gcnprune_cuda_roots "${_gcnprune_hint}")
    endif()
  endforeach()
  find_program(GCNPRUNE_NVCC nvcc HINTS ${_gcnprune_cuda_roots} PATH_SUFFIXES bin)
  if(GCNPRUNE_NVCC)
    # /usr/local/bin/nvcc is usually a link: the toolkit is the folder of the real file.
    get_filename_component(_gcnprune_nvcc_real "${GCNPRUNE_NVCC}" REALPATH)
    get_filename_component(_gcnprune_cuda_root "${_gcnprune_nvcc_real}/../.." ABSOLUTE)
    if(EXISTS "${_gcnprune_cuda_root}/include/cuda_runtime.h")
      set(_gcnprune_cuda_toolkit_found ON)
      if(NOT CUDA_TOOLKIT_ROOT_DIR)
        set(CUDA_TOOLKIT_ROOT_DIR "${_gcnprune_cuda_root}" CACHE PATH "CUDA toolkit (for torch)")
      endif()
      if(NOT CUDAToolkit_ROOT)
        set(CUDAToolkit_ROOT "${_gcnprune_cuda_root}" CACHE PATH "CUDA toolkit (for torch)")
      endif()
      if(NOT CMAKE_CUDA_COMPILER)
        set(CMAKE_CUDA_COMPILER "${_gcnprune_nvcc_real}" CACHE FILEPATH "nvcc")
      endif()
      # Only the architectures we build for (torch's default is "all common ones": slow).
      if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
        set(TORCH_CUDA_ARCH_LIST "9.0")
      endif()
    endif()
  endif()
  # CUDA wheels bring cuBLAS, NVRTC, ... as site-packages/nvidia/<pkg>/lib/libX.so.N (no
  # unversioned link, so find_library cannot see them). Use them for what the toolkit lacks.
  set(GCNPRUNE_PIP_CUDA_INCLUDE_DIRS "")
  file(GLOB _gcnprune_pip_cuda_dirs LIST_DIRECTORIES true "${GCNPRUNE_TORCH_ROOT}/../nvidia/*")
  foreach(_gcnprune_dir IN LISTS _gcnprune_pip_cuda_dirs)
    if(IS_DIRECTORY "${_gcnprune_dir}/include")
      list(APPEND GCNPRUNE_PIP_CUDA_INCLUDE_DIRS "${_gcnprune_dir}/include")
    endif()
  endforeach()
  foreach(_gcnprune_lib cudart cublas cublasLt cufft curand cusparse cusolver nvrtc nvJitLink cuFile)
    if(NOT CUDA_${_gcnprune_lib}_LIBRARY AND
       (NOT _gcnprune_cuda_toolkit_found OR NOT EXISTS "${_gcnprune_cuda_root}/lib64/lib${_gcnprune_lib}.so"))
      file(GLOB _gcnprune_candidates "${GCNPRUNE_TORCH_ROOT}/../nvidia/*/lib/lib${_gcnprune_lib}.so*")
      if(_gcnprune_candidates)
        list(SORT _gcnprune_candidates)
        list(GET _gcnprune_candidates 0 _gcnprune_first)
        set(CUDA_${_gcnprune_lib}_LIBRARY "${_gcnprune_first}" CACHE FILEPATH "${_gcnprune_lib} (pip wheel)")
      endif()
    endif()
  endforeach()
endmacro()

macro(_gcnprune_import_torch_manually)
  set(_gcnprune_libs "")
  foreach(_gcnprune_name torch torch_cpu c10)
    if(NOT EXISTS "${GCNPRUNE_TORCH_ROOT}/lib/lib${_gcnprune_name}.so")
      message(FATAL_ERROR "gcnprune: ${GCNPRUNE_TORCH_ROOT}/lib/lib${_gcnprune_name}.so not found")
    endif()
    list(APPEND _gcnprune_libs "${GCNPRUNE_TORCH_ROOT}/lib/lib${_gcnprune_name}.so")
  endforeach()
  if(NOT TARGET gcnprune_torch)
    add_library(gcnprune_torch INTERFACE IMPORTED)
    set_target_properties(gcnprune_torch PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES
        "${GCNPRUNE_TORCH_ROOT}/include;${GCNPRUNE_TORCH_ROOT}/include/torch/csrc/api/include"
      # --no-as-needed: libtorch.so itself defines little, but loading it loads libtorch_cuda.so
      # (CUDA kernels) when present, as TorchConfig.cmake does.
      INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed;${_gcnprune_libs};-Wl,--as-needed"
      INTERFACE_COMPILE_FEATURES cxx_std_20)
  endif()
  set(GCNPRUNE_TORCH_TARGETS gcnprune_torch)
endmacro()

macro(gcnprune_find_torch)
  _gcnprune_locate_torch_config_dir()
  set(GCNPRUNE_TORCH_LIBRARY_DIR "${GCNPRUNE_TORCH_ROOT}/lib")
  set(GCNPRUNE_TORCH_VERSION "unknown")
  if(EXISTS "${GCNPRUNE_TORCH_CONFIG_DIR}/TorchConfigVersion.cmake")
    file(STRINGS "${GCNPRUNE_TORCH_CONFIG_DIR}/TorchConfigVersion.cmake" _gcnprune_version_line
         REGEX "set\\(PACKAGE_VERSION \"")
    string(REGEX REPLACE ".*\"([^\"]*)\".*" "\\1" GCNPRUNE_TORCH_VERSION "${_gcnprune_version_line}")
  endif()
  if(EXISTS "${GCNPRUNE_TORCH_ROOT}/lib/libtorch_cuda.so")
    set(GCNPRUNE_TORCH_HAS_CUDA ON)
  else()
    set(GCNPRUNE_TORCH_HAS_CUDA OFF)
  endif()
  if(NOT GCNPRUNE_TORCH_DISCOVERY)
    set(GCNPRUNE_TORCH_DISCOVERY auto)
  endif()

  set(_gcnprune_cuda_toolkit_found OFF)
  if(GCNPRUNE_TORCH_HAS_CUDA)
    _gcnprune_cuda_hints()
  endif()
  set(GCNPRUNE_TORCH_DISCOVERY_USED "${GCNPRUNE_TORCH_DISCOVERY}")
  if(GCNPRUNE_TORCH_DISCOVERY STREQUAL "auto")
    if(GCNPRUNE_TORCH_HAS_CUDA AND NOT _gcnprune_cuda_toolkit_found)
      message(STATUS "gcnprune: CUDA build of torch but no CUDA toolkit (nvcc) found: importing "
                     "libtorch directly instead of find_package(Torch) (set CUDA_HOME to use it)")
      set(GCNPRUNE_TORCH_DISCOVERY_USED manual)
    else()
      set(GCNPRUNE_TORCH_DISCOVERY_USED config)
    endif()
  endif()

  if(GCNPRUNE_TORCH_DISCOVERY_USED STREQUAL "config")
    find_package(Torch REQUIRED CONFIG HINTS "${GCNPRUNE_TORCH_CONFIG_DIR}")
    # A remaining *-NOTFOUND entry would only fail later, at link time, with a cryptic message.
    foreach(_gcnprune_item IN LISTS TORCH_LIBRARIES)
      if(_gcnprune_item MATCHES "-NOTFOUND$")
        message(FATAL_ERROR "gcnprune: find_package(Torch) left ${_gcnprune_item}; set that "
                            "variable to the library file (e.g. from site-packages/nvidia/*/lib)")
      endif()
    endforeach()
    set(GCNPRUNE_TORCH_TARGETS ${TORCH_LIBRARIES})
  elseif(GCNPRUNE_TORCH_DISCOVERY_USED STREQUAL "manual")
    _gcnprune_import_torch_manually()
  else()
    message(FATAL_ERROR "GCNPRUNE_TORCH_DISCOVERY must be auto, config or manual, got "
                        "'${GCNPRUNE_TORCH_DISCOVERY}'")
  endif()
endmacro()
