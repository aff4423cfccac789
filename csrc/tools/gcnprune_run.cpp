// gcnprune_run: load an exported model (TorchScript file, or an AOTInductor .pt2 package when
// libtorch ships the loader), run it on one input, print the output's shape and checksum, and time
// N iterations. Plain libtorch only: exported gcnprune models hold standard aten ops, so the
// project's custom-op library is not needed here.
//
// Usage:
//   gcnprune_run MODEL [--format auto|torchscript|aoti] [--shape 1,3,32,32 | --input FILE]
//                [--seed 0] [--iters 50] [--warmup 10] [--threads 0] [--device cpu|cuda]
//                [--optimize] [--save-output FILE]
//
// MODEL   a TorchScript file (torch.jit.save) or an AOTInductor package (.pt2 written by
//         torch._inductor.aoti_compile_and_package); --format auto picks by the .pt2 extension.
// --input a tensor written from Python with torch.save(tensor, FILE) (read with
//         torch::pickle_load); otherwise a standard-normal tensor of --shape drawn with
//         torch::manual_seed(--seed) (the same values as torch.manual_seed(seed); torch.randn(shape)
//         in Python on CPU).
// --threads intra-op threads (0 = libtorch's default).
// --optimize  run torch::jit::optimize_for_inference on a TorchScript module (freezes it and
//         fuses conv+bn, etc.).
// --save-output FILE  write the outputs of the first run (a tuple of CPU tensors, one per output)
//         with torch::pickle_save; read them in Python with torch.load(FILE, weights_only=True).
//
// Output (one "key value..." record per line, stable for scripts and tests):
//   model <path> format <fmt> device <dev> threads <n>
//   input shape [1, 3, 32, 32]
//   output 0 shape [1, 10] dtype Float
//   checksum 0 sum <%.17g> abs_sum <%.17g>      (float64 accumulation)
//   latency_ms median <m> p90 <p> mean <a> min <lo> iters <n> warmup <w>
//   cpu_ms median <m> p90 <p> mean <a> min <lo>     (process CPU time per iteration: with
//                                                    --threads 1 on a busy, shared machine this
//                                                    is the compute time without the waits)
#include <torch/script.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <time.h>

#if __has_include(<torch/csrc/inductor/aoti_package/model_package_loader.h>)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#define GCNPRUNE_HAVE_AOTI 1
#else
#define GCNPRUNE_HAVE_AOTI 0
#endif

namespace {

struct Options {
  std::string model_path;
  std::string format = "auto";
  std::vector<int64_t> shape = {1, 3, 32, 32};
  std::string input_path;
  int64_t seed = 0;
  int iters = 50;
  int warmup = 10;
  int threads = 0;
  std::string device = "cpu";
  bool optimize = false;
  std::string output_path;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "gcnprune_run: " << message << "\n"
            << "usage: gcnprune_run MODEL [--format auto|torchscript|aoti] "
               "[--shape 1,3,32,32 | --input FILE] [--seed S] [--iters N] [--warmup W] "
               "[--threads T] [--device cpu|cuda] [--optimize] [--save-output FILE]\n";
  std::exit(2);
}

int64_t parse_int(const std::string& flag, const std::string& text, int64_t min_value) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used != text.size() || value < min_value) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    usage_error(flag + " expects an integer >= " + std::to_string(min_value) + ", got '" + text +
                "'");
  }
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (item.empty()) continue;
    shape.push_back(parse_int("--shape", item, 1));
  }
  if (shape.empty()) usage_error("--shape expects comma-separated sizes, e.g. 1,3,32,32");
  return shape;
}

Options parse_args(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--format") {
      opt.format = value();
    } else if (arg == "--shape") {
      opt.shape = parse_shape(value());
    } else if (arg == "--input") {
      opt.input_path = value();
    } else if (arg == "--seed") {
      opt.seed = parse_int(arg, value(), 0);
    } else if (arg == "--iters") {
      opt.iters = static_cast<int>(parse_int(arg, value(), 0));
    } else if (arg == "--warmup") {
      opt.warmup = static_cast<int>(parse_int(arg, value(), 0));
    } else if (arg == "--threads") {
      opt.threads = static_cast<int>(parse_int(arg, value(), 0));
    } else if (arg == "--device") {
      opt.device = value();
    } else if (arg == "--optimize") {
      opt.optimize = true;
    } else if (arg == "--save-output") {
      opt.output_path = value();
    } else if (arg == "-h" || arg == "--help") {
      usage_error("help");
    } else if (!arg.empty() && arg[0] == '-') {
      usage_error("unknown option " + arg);
    } else if (opt.model_path.empty()) {
      opt.model_path = arg;
    } else {
      usage_error("unexpected argument " + arg);
    }
  }
  if (opt.model_path.empty()) usage_error("missing MODEL path");
  if (opt.format == "auto") {
    const std::string ext = ".pt2";
    const auto& p = opt.model_path;
    const bool is_pt2 = p.size() >= ext.size() && p.compare(p.size() - ext.size(), ext.size(), ext) == 0;
    opt.format = is_pt2 ? "aoti" : "torchscript";
  }
  if (opt.format != "torchscript" && opt.format != "aoti")
    usage_error("--format must be auto, torchscript or aoti, got '" + opt.format + "'");
  if (opt.device != "cpu" && opt.device != "cuda")
    usage_error("--device must be cpu or cuda, got '" + opt.device + "'");
  return opt;
}

std::string shape_string(const at::Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t d = 0; d < t.dim(); ++d) out << (d ? ", " : "") << t.size(d);
  out << "]";
  return out.str();
}

at::Tensor load_input(const Options& opt) {
  if (opt.input_path.empty()) {
    torch::manual_seed(static_cast<uint64_t>(opt.seed));
    return torch::randn(opt.shape);
  }
  std::ifstream file(opt.input_path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open --input file " + opt.input_path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const c10::IValue value = torch::pickle_load(bytes);
  if (!value.isTensor())
    throw std::runtime_error("--input " + opt.input_path +
                             " does not hold a tensor (write it with torch.save(tensor, path))");
  return value.toTensor();
}

// Flattens a module's result (a tensor, or nested tuples / lists of tensors) into tensors.
void collect_tensors(const c10::IValue& value, std::vector<at::Tensor>& out) {
  if (value.isTensor()) {
    out.push_back(value.toTensor());
  } else if (value.isTuple()) {
    for (const auto& item : value.toTupleRef().elements()) collect_tensors(item, out);
  } else if (value.isList()) {
    for (const auto& item : value.toListRef()) collect_tensors(item, out);
  } else {
    throw std::runtime_error("model returned an unsupported type: " + value.tagKind());
  }
}

double percentile(std::vector<double> sorted_values, double q) {
  if (sorted_values.empty()) return 0.0;
  std::sort(sorted_values.begin(), sorted_values.end());
  // Linear interpolation between closest ranks (numpy's default).
  const double pos = q * static_cast<double>(sorted_values.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, sorted_values.size() - 1);
  return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - static_cast<double>(lo));
}

// CPU time of the whole process (all threads), in ms.
double process_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
}

void print_stats(const char* label, const std::vector<double>& values) {
  double total = 0.0;
  for (double v : values) total += v;
  std::printf("%s median %.6f p90 %.6f mean %.6f min %.6f", label, percentile(values, 0.5),
              percentile(values, 0.9), total / static_cast<double>(values.size()),
              *std::min_element(values.begin(), values.end()));
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse_args(argc, argv);
  try {
    if (opt.threads > 0) at::set_num_threads(opt.threads);
    const torch::Device device(opt.device == "cuda" ? torch::kCUDA : torch::kCPU);
    if (device.is_cuda() && !torch::cuda::is_available())
      throw std::runtime_error("--device cuda but no CUDA device is available to libtorch");

    std::function<std::vector<at::Tensor>(const at::Tensor&)> forward;
    torch::jit::Module script_module;
#if GCNPRUNE_HAVE_AOTI
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> aoti_loader;
#endif
    if (opt.format == "torchscript") {
      script_module = torch::jit::load(opt.model_path, device);
      script_module.eval();
      if (opt.optimize) script_module = torch::jit::optimize_for_inference(script_module);
      forward = [&script_module](const at::Tensor& x) {
        std::vector<at::Tensor> outs;
        collect_tensors(script_module.forward({x}), outs);
        return outs;
      };
    } else {
#if GCNPRUNE_HAVE_AOTI
      // The package was compiled for one device; the loader places it there.
      aoti_loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(opt.model_path);
      forward = [&aoti_loader](const at::Tensor& x) { return aoti_loader->run({x}); };
#else
      throw std::runtime_error(
          "this libtorch has no AOTInductor package loader; export to torchscript instead");
#endif
    }

    // After loading: freezing (--optimize) must see normal tensors, not inference tensors.
    c10::InferenceMode inference_mode;
    const at::Tensor input = load_input(opt).to(device).contiguous();
    std::vector<at::Tensor> outputs = forward(input);

    std::printf("model %s format %s device %s threads %d\n", opt.model_path.c_str(),
                opt.format.c_str(), opt.device.c_str(), at::get_num_threads());
    std::printf("input shape %s\n", shape_string(input).c_str());
    for (size_t i = 0; i < outputs.size(); ++i) {
      const at::Tensor out = outputs[i].detach().to(torch::kCPU, torch::kDouble);
      std::printf("output %zu shape %s dtype %s\n", i, shape_string(outputs[i]).c_str(),
                  std::string(c10::toString(outputs[i].scalar_type())).c_str());
      std::printf("checksum %zu sum %.17g abs_sum %.17g\n", i, out.sum().item<double>(),
                  out.abs().sum().item<double>());
    }
    if (!opt.output_path.empty()) {
      // A tuple of plain tensors: what torch.load(..., weights_only=True) accepts (a typed
      // c10::List would pickle as torch.jit._pickle.build_tensorlist, which it refuses).
      std::vector<c10::IValue> saved;
      for (const auto& out : outputs) saved.emplace_back(out.detach().to(torch::kCPU).clone());
      const std::vector<char> bytes =
          torch::pickle_save(c10::IValue(c10::ivalue::Tuple::create(std::move(saved))));
      std::ofstream file(opt.output_path, std::ios::binary);
      if (!file) throw std::runtime_error("cannot write --save-output file " + opt.output_path);
      file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!file) throw std::runtime_error("writing --save-output file " + opt.output_path + " failed");
      std::printf("saved outputs %s\n", opt.output_path.c_str());
    }

    auto sync = [&]() {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    for (int i = 0; i < opt.warmup; ++i) forward(input);
    sync();
    std::vector<double> times_ms, cpu_ms;
    times_ms.reserve(static_cast<size_t>(opt.iters));
    cpu_ms.reserve(static_cast<size_t>(opt.iters));
    for (int i = 0; i < opt.iters; ++i) {
      const double cpu_start = process_cpu_ms();
      const auto start = std::chrono::steady_clock::now();
      forward(input);
      sync();
      const auto stop = std::chrono::steady_clock::now();
      cpu_ms.push_back(process_cpu_ms() - cpu_start);
      times_ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    }
    if (!times_ms.empty()) {
      print_stats("latency_ms", times_ms);
      std::printf(" iters %d warmup %d\n", opt.iters, opt.warmup);
      print_stats("cpu_ms", cpu_ms);
      std::printf("\n");
    }
  } catch (const std::exception& e) {
    std::cerr << "gcnprune_run: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
