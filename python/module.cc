// module.cc: safeshard._safeshard, the C++ core for Python (pybind11). Torch-free: arrays come in
// through the buffer protocol (numpy) or DLPack (torch CPU tensors, bf16 included), zero-copy.
// The Python package (python/safeshard/__init__.py) gives these functions their public,
// PyTorch/Automodel-compatible signatures; this file only binds.
//
// Every call that reads or writes checkpoint data runs with the GIL released on a thread of its
// own while the calling thread lets Python handle signals: Ctrl+C cancels the work (nothing
// half-written is published) and raises KeyboardInterrupt. absl errors become Python exceptions
// carrying the same messages: ValueError (bad arguments), FileNotFoundError, FileExistsError,
// TimeoutError, KeyboardInterrupt (cancelled), NotImplementedError, else
// safeshard.CheckpointError (an incomplete, inconsistent or corrupt checkpoint).
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/consolidate/consolidate.h"
#include "core/consolidate/spec.h"
#include "core/consolidate/tcp_collective.h"
#include "core/diff/diff.h"
#include "core/format/filenames.h"
#include "core/format/internal/json_util.h"
#include "core/io/url.h"
#include "core/layout/layout.h"
#include "core/layout/layout_json.h"
#include "core/layout/slice_reader.h"
#include "core/quant/quant.h"
#include "core/remap/keymap.h"
#include "core/remap/remap.h"
#include "core/util/version.h"
#include "core/write/shard_writer.h"

namespace py = pybind11;

namespace safeshard::python {
namespace {

// ---- Errors ---------------------------------------------------------------------------------

struct StatusError : std::exception {
  explicit StatusError(absl::Status s) : status(std::move(s)) {}
  const char* what() const noexcept override { return "absl status"; }
  absl::Status status;
};

[[noreturn]] void Throw(const absl::Status& s) {
  throw StatusError(s);
}
void Check(const absl::Status& s) {
  if (!s.ok()) Throw(s);
}
template <typename T>
T Unwrap(absl::StatusOr<T> v) {
  if (!v.ok()) Throw(v.status());
  return std::move(*v);
}

PyObject* g_checkpoint_error = nullptr;  // safeshard.CheckpointError (a RuntimeError)

void SetPythonError(const absl::Status& s) {
  const std::string msg(s.message());
  PyObject* type = g_checkpoint_error;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: type = PyExc_ValueError; break;
    case absl::StatusCode::kNotFound: type = PyExc_FileNotFoundError; break;
    case absl::StatusCode::kAlreadyExists: type = PyExc_FileExistsError; break;
    case absl::StatusCode::kDeadlineExceeded: type = PyExc_TimeoutError; break;
    case absl::StatusCode::kCancelled: type = PyExc_KeyboardInterrupt; break;
    case absl::StatusCode::kUnimplemented: type = PyExc_NotImplementedError; break;
    default: break;
  }
  PyErr_SetString(type, msg.c_str());
}

// ---- Running work with the GIL released, interruptible by Ctrl+C -----------------------------

// Runs `work(cancel)` on a thread of its own; this thread waits with the GIL released and every
// 20 ms lets Python check for signals. A KeyboardInterrupt sets `cancel`, waits for the work to
// stop and is raised. A Python exception raised by a callback the work ran (progress) cancels
// the work and is re-raised here.
struct Interruptible {
  std::atomic<bool> cancel{false};
  py::object callback_error;  // set (with the GIL held) by Callback()

  // Calls `fn` with the GIL held from the work's thread; a Python exception cancels the work.
  template <typename Fn>
  void Callback(Fn&& fn) {
    if (cancel.load()) return;
    py::gil_scoped_acquire gil;
    try {
      fn();
    } catch (py::error_already_set& e) {
      callback_error = e.value();
      cancel = true;
    }
  }

  absl::Status Run(const std::function<absl::Status(const std::atomic<bool>*)>& work) {
    std::atomic<bool> done{false};
    absl::Status result;
    std::thread worker;
    {
      py::gil_scoped_release release;
      worker = std::thread([&] {
        result = work(&cancel);
        done = true;
      });
    }
    bool interrupted = false;
    while (true) {
      {
        py::gil_scoped_release release;
        for (int i = 0; i < 20 && !done.load(); ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (done.load()) break;
      if (PyErr_CheckSignals() != 0) {
        interrupted = true;
        cancel = true;
        break;
      }
    }
    {
      py::gil_scoped_release release;
      worker.join();
    }
    if (interrupted) throw py::error_already_set();  // the KeyboardInterrupt Python raised
    if (callback_error) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(callback_error.ptr())),
                      callback_error.ptr());
      throw py::error_already_set();
    }
    return result;
  }
};

// ---- Arrays: buffer protocol (numpy) or DLPack (torch) ------------------------------------------

// The DLPack ABI (v0.x, the "dltensor" capsule torch 1.13 and numpy export), declared here.
struct DLDevice {
  int32_t device_type;  // 1: CPU
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat, 6 bool
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null: compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

struct ArrayRef {
  char* data = nullptr;
  uint64_t nbytes = 0;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  std::shared_ptr<void> keep;  // the buffer view or the DLPack tensor; released with the GIL held
  py::object source;           // DLPack: the tensor (its memory may move: see StillAt)
};

// A torch tensor can be resized or re-pointed after it was shared (resize_, set_): its memory
// then moves and the pointer taken at add() dangles. Checked again, with the GIL held, right
// before the memory is used (numpy refuses to resize an array whose buffer is exported).
void CheckStillAt(const ArrayRef& a, const std::string& name) {
  if (!a.source) return;
  py::object cap = a.source.attr("__dlpack__")();
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (m == nullptr) throw py::error_already_set();
  const char* now = static_cast<char*>(m->dl_tensor.data) + m->dl_tensor.byte_offset;
  int64_t numel = 1;
  for (int d = 0; d < m->dl_tensor.ndim; ++d) numel *= m->dl_tensor.shape[d];
  const bool same = now == a.data &&
                    static_cast<uint64_t>(numel) * ((m->dl_tensor.dtype.bits + 7) / 8) == a.nbytes;
  // The fresh capsule is not consumed: its destructor calls the deleter.
  if (!same) {
    Throw(absl::InvalidArgumentError(absl::StrCat(
        "tensor ", internal::Quote(name),
        ": the array given to add() was resized or re-pointed since (resize_, set_); keep it "
        "unchanged until commit() returns")));
  }
}

DType DTypeFromName(const std::string& name) {
  static const std::map<std::string, DType> aliases = {
      {"bfloat16", DType::kBF16}, {"float16", DType::kF16}, {"half", DType::kF16},
      {"float32", DType::kF32},   {"float", DType::kF32},   {"float64", DType::kF64},
      {"double", DType::kF64},    {"int8", DType::kI8},     {"uint8", DType::kU8},
      {"int16", DType::kI16},     {"int32", DType::kI32},   {"int64", DType::kI64},
      {"bool", DType::kBOOL},     {"uint16", DType::kU16},  {"uint32", DType::kU32},
      {"uint64", DType::kU64}};
  std::string n = name;
  if (n.rfind("torch.", 0) == 0) n = n.substr(6);
  if (auto it = aliases.find(n); it != aliases.end()) return it->second;
  absl::StatusOr<DType> d = ParseDType(name);
  if (!d.ok()) {
    Throw(absl::InvalidArgumentError(
        absl::StrCat("dtype \"", name,
                     "\" is neither a safetensors dtype (BF16, F8_E4M3, ...) nor "
                     "a numpy/torch name (bfloat16, float32, ...)")));
  }
  return *d;
}

std::optional<DType> DTypeOfBuffer(const Py_buffer& v) {
  std::string f = v.format != nullptr ? v.format : "B";
  // One element type in native (little-endian) order: "f", "<f", "=f", "@f". Big-endian
  // (">f", "!f"), complex ("Zf") and structured formats have no safetensors dtype.
  if (!f.empty() && (f[0] == '<' || f[0] == '=' || f[0] == '@')) f = f.substr(1);
  if (f.size() != 1) return std::nullopt;
  const char c = f[0];
  const Py_ssize_t n = v.itemsize;
  switch (c) {
    case 'e': return DType::kF16;
    case 'f': return DType::kF32;
    case 'd': return DType::kF64;
    case '?': return DType::kBOOL;
    case 'b': return DType::kI8;
    case 'B': return DType::kU8;
    case 'h': return DType::kI16;
    case 'H': return DType::kU16;
    case 'i':
    case 'l':
    case 'q': return n == 4 ? DType::kI32 : n == 8 ? std::optional(DType::kI64) : std::nullopt;
    case 'I':
    case 'L':
    case 'Q': return n == 4 ? DType::kU32 : n == 8 ? std::optional(DType::kU64) : std::nullopt;
    default: return std::nullopt;
  }
}

std::optional<DType> DTypeOfDlpack(const DLDataType& t) {
  if (t.lanes != 1) return std::nullopt;
  switch (t.code) {
    case 0:
      return t.bits == 8    ? std::optional(DType::kI8)
             : t.bits == 16 ? std::optional(DType::kI16)
             : t.bits == 32 ? std::optional(DType::kI32)
             : t.bits == 64 ? std::optional(DType::kI64)
                            : std::nullopt;
    case 1:
      return t.bits == 8    ? std::optional(DType::kU8)
             : t.bits == 16 ? std::optional(DType::kU16)
             : t.bits == 32 ? std::optional(DType::kU32)
             : t.bits == 64 ? std::optional(DType::kU64)
                            : std::nullopt;
    case 2:
      return t.bits == 16   ? std::optional(DType::kF16)
             : t.bits == 32 ? std::optional(DType::kF32)
             : t.bits == 64 ? std::optional(DType::kF64)
                            : std::nullopt;
    case 4: return t.bits == 16 ? std::optional(DType::kBF16) : std::nullopt;
    case 6: return t.bits == 8 ? std::optional(DType::kBOOL) : std::nullopt;
    default: return std::nullopt;
  }
}

// A C-contiguous CPU array, zero-copy. `dtype` (a safetensors or numpy/torch name) reinterprets
// its bytes (e.g. a uint16 numpy array of bfloat16 bits, a uint8 array of F8_E4M3 codes).
ArrayRef View(py::handle obj, bool writable, const std::string& dtype) {
  ArrayRef a;
  std::optional<DType> found;
  const std::string what = py::str(py::type::of(obj).attr("__name__"));
  std::string format;  // the buffer's, for messages
  if (PyObject_CheckBuffer(obj.ptr())) {
    auto view = std::shared_ptr<Py_buffer>(new Py_buffer, [](Py_buffer* v) {
      PyBuffer_Release(v);
      delete v;
    });
    if (PyObject_GetBuffer(obj.ptr(), view.get(),
                           (writable ? PyBUF_WRITABLE : 0) | PyBUF_FORMAT | PyBUF_STRIDES) != 0) {
      throw py::error_already_set();
    }
    if (!PyBuffer_IsContiguous(view.get(), 'C')) {
      Throw(absl::InvalidArgumentError(absl::StrCat(
          "the ", what, " is not C-contiguous (numpy.ascontiguousarray / tensor.contiguous())")));
    }
    a.data = static_cast<char*>(view->buf);
    a.nbytes = static_cast<uint64_t>(view->len);
    for (int d = 0; d < view->ndim; ++d) a.shape.push_back(static_cast<uint64_t>(view->shape[d]));
    found = DTypeOfBuffer(*view);
    format = view->format != nullptr ? view->format : "B";
    if (!found) {
      Throw(absl::InvalidArgumentError(absl::StrCat(
          "the ", what, "'s element format \"", format,
          "\" has no safetensors dtype (big-endian, complex and structured arrays are refused: "
          "convert with .astype(...) first)")));
    }
    a.keep = view;
  } else if (py::hasattr(obj, "__dlpack__")) {
    for (const char* lazy : {"is_neg", "is_conj"}) {
      if (py::hasattr(obj, lazy) && obj.attr(lazy)().cast<bool>()) {
        Throw(absl::InvalidArgumentError(absl::StrCat("the ", what, " is a lazy ", lazy + 3,
                                                      " view: call .resolve_", lazy + 3,
                                                      "() (or .clone()) first")));
      }
    }
    py::object cap;
    try {
      cap = obj.attr("__dlpack__")();
    } catch (py::error_already_set& e) {
      Throw(absl::InvalidArgumentError(
          absl::StrCat("the ", what, " cannot be shared through DLPack (", e.what(),
                       "); pass tensor.numpy() (bool tensors on torch < 2) or a supported dtype")));
    }
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
    if (m == nullptr) throw py::error_already_set();
    PyCapsule_SetName(cap.ptr(), "used_dltensor");  // consumed: we call its deleter
    a.keep = std::shared_ptr<DLManagedTensor>(m, [](DLManagedTensor* t) {
      if (t->deleter != nullptr) t->deleter(t);
    });
    const DLTensor& t = m->dl_tensor;
    if (t.device.device_type != 1) {
      Throw(absl::InvalidArgumentError(
          absl::StrCat("the ", what, " is not in CPU memory (move it with .cpu() first)")));
    }
    int64_t expect = 1;
    bool contiguous = true;
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (t.strides != nullptr && t.shape[d] > 1 && t.strides[d] != expect) contiguous = false;
      expect *= t.shape[d];
    }
    if (!contiguous) {
      Throw(absl::InvalidArgumentError(
          absl::StrCat("the ", what, " is not contiguous (tensor.contiguous() first)")));
    }
    a.data = static_cast<char*>(t.data) + t.byte_offset;
    for (int d = 0; d < t.ndim; ++d) a.shape.push_back(static_cast<uint64_t>(t.shape[d]));
    found = DTypeOfDlpack(t.dtype);
    const uint64_t numel = static_cast<uint64_t>(expect);
    a.nbytes = numel * ((t.dtype.bits + 7) / 8);
    a.source = py::reinterpret_borrow<py::object>(obj);  // checked again before it is used
  } else {
    Throw(absl::InvalidArgumentError(
        absl::StrCat("a ", what, " is not an array: pass a numpy array or a CPU torch tensor")));
  }
  if (!dtype.empty()) {
    const DType want = DTypeFromName(dtype);
    uint64_t numel = 1;
    for (uint64_t s : a.shape) numel *= s;
    if (IsSubByte(want) || numel * (BitsOf(want) / 8) != a.nbytes) {
      Throw(absl::InvalidArgumentError(absl::StrCat("dtype ", DTypeName(want), " does not fit the ",
                                                    what, "'s ", a.nbytes, " bytes for ", numel,
                                                    " elements")));
    }
    a.dtype = want;
  } else if (found) {
    a.dtype = *found;
  } else {
    Throw(absl::InvalidArgumentError(
        absl::StrCat("the ", what, "'s element type has no safetensors dtype; pass dtype=")));
  }
  return a;
}

// ---- Helpers --------------------------------------------------------------------------------

ResolvedPath Where(const std::string& path) {
  UrlOptions o;
  return Unwrap(ResolveUrl(path, o));
}

py::object JsonToPython(const std::string& text) {
  return py::module_::import("json").attr("loads")(text);
}

std::vector<KeyMap::Rule> Rules(const std::vector<std::pair<std::string, std::string>>& pairs) {
  std::vector<KeyMap::Rule> out;
  for (const auto& [p, r] : pairs) out.push_back({p, r});
  return out;
}

// ---- Functions ------------------------------------------------------------------------------

py::dict Consolidate(const std::string& input, const std::string& output,
                     const std::string& spec_json,
                     std::optional<std::map<std::string, int>> fqn_to_index,
                     std::optional<py::function> progress, int rank, int world_size,
                     const std::string& host, int port, double timeout_s,
                     const std::string& group_key) {
  Interruptible run;
  absl::StatusOr<ConsolidateResult> result = absl::UnknownError("not run");
  ConsolidateOptions o;
  std::unique_ptr<ResolvedConsolidation> resolved;
  const absl::Status s = run.Run([&](const std::atomic<bool>* cancel) -> absl::Status {
    // Ranks meet first: whatever goes wrong on one rank afterwards (a bad path, a bad option)
    // is then reported on every rank instead of leaving the others waiting for it.
    std::unique_ptr<Collective> group;
    if (world_size > 1) {
      TcpGroupOptions g{.rank = rank,
                        .world_size = world_size,
                        .host = host,
                        .port = port,
                        .group_key = group_key,
                        .timeout = absl::Seconds(timeout_s),
                        .cancel = cancel};
      absl::StatusOr<std::unique_ptr<Collective>> c = NewTcpCollective(g);
      if (!c.ok()) return c.status();
      group = std::move(*c);
    }
    absl::StatusOr<ResolvedPath> in = absl::UnknownError("not resolved");
    absl::Status prepared = [&]() -> absl::Status {
      absl::StatusOr<ConsolidateSpec> spec = ParseConsolidateSpec(spec_json);
      if (!spec.ok()) return spec.status();
      absl::StatusOr<std::unique_ptr<ResolvedConsolidation>> r =
          ResolveConsolidateSpec(LocalFileSystem(), *spec);
      if (!r.ok()) return r.status();
      resolved = std::move(*r);
      in = ResolveUrl(input, UrlOptions());
      if (!in.ok()) return in.status();
      return in->fs->Stat(in->path).status();
    }();
    if (group) prepared = AllGatherStatus(*group, prepared);
    if (!prepared.ok()) return prepared;
    o = resolved->options;
    if (fqn_to_index) o.fqn_to_index = *fqn_to_index;
    if (in->remote) o.output_fs = &LocalFileSystem();
    o.progress = [&](uint64_t done, uint64_t total) {
      if (progress) run.Callback([&] { (*progress)(done, total); });
    };
    o.cancel = cancel;
    result = safeshard::Consolidate(*in->fs, in->path, output, o, group.get());
    return result.status();
  });
  Check(s);
  py::dict d;
  d["output_dir"] = result->output_dir;
  d["files"] = result->files;
  d["bytes"] = result->bytes;
  d["seconds"] = result->seconds;
  d["warnings"] = result->warnings;
  d["dequantized"] = result->dequantized;
  d["verified_bytes"] = result->verify ? py::cast(result->verify->bytes_checked) : py::none();
  return d;
}

CheckpointLayout ScanPath(const std::string& path, const ScanOptions& so = {}) {
  ResolvedPath where = Where(path);
  Interruptible run;
  absl::StatusOr<CheckpointLayout> ck = absl::UnknownError("not run");
  Check(run.Run([&](const std::atomic<bool>*) {
    ck = CheckpointLayout::Scan(*where.fs, where.path, so);
    return ck.status();
  }));
  return std::move(*ck);
}

py::object Inspect(const std::string& path) {
  CheckpointLayout ck = ScanPath(path);
  return JsonToPython(LayoutJsonText(ck, nullptr, -1));
}

py::object Verify(const std::string& path, int expect_ranks, const std::string& reference,
                  bool strict, bool checksums) {
  ScanOptions so;
  so.expect_ranks = expect_ranks;
  so.strict = strict;
  ResolvedPath where = Where(path);
  nlohmann::ordered_json j;
  Interruptible run;
  Check(run.Run([&](const std::atomic<bool>*) -> absl::Status {
    absl::StatusOr<CheckpointLayout> ck = CheckpointLayout::Scan(*where.fs, where.path, so);
    if (!ck.ok()) return ck.status();
    if (!reference.empty()) {
      ResolvedPath ref = Where(reference);
      absl::StatusOr<CheckpointLayout> r = CheckpointLayout::Scan(*ref.fs, ref.path);
      if (!r.ok()) return r.status();
      ck->CheckAgainstReference(*r);
    }
    std::vector<Problem> problems = ck->problems();
    if (checksums) {
      absl::StatusOr<ChecksumReport> sums = VerifyChecksums(*where.fs, *ck);
      if (!sums.ok()) return sums.status();
      problems.insert(problems.end(), sums->problems.begin(), sums->problems.end());
      j["checksums"] = {{"bytes", sums->bytes}, {"unchecked", sums->unchecked}};
    }
    nlohmann::ordered_json p = nlohmann::ordered_json::array();
    bool ok = !ck->files().empty();
    for (const Problem& pr : problems) {
      p.push_back(ProblemJson(pr));
      ok &= !IsBlocking(pr.kind);
    }
    j["schema"] = "safeshard.verify/1";
    j["ok"] = ok;
    j["problems"] = std::move(p);
    j["completeness"] = CompletenessJson(ck->completeness());
    return absl::OkStatus();
  }));
  return JsonToPython(j.dump());
}

py::dict Diff(const std::string& a, const std::string& b, bool headers_only,
              std::optional<double> atol, std::optional<double> rtol) {
  ResolvedPath wa = Where(a), wb = Where(b);
  DiffOptions o;
  o.headers_only = headers_only;
  if (atol || rtol) {
    o.by_value = true;
    o.atol = atol.value_or(0);
    o.rtol = rtol.value_or(0);
  }
  absl::StatusOr<DiffReport> rep = absl::UnknownError("not run");
  Interruptible run;
  Check(run.Run([&](const std::atomic<bool>* cancel) -> absl::Status {
    o.cancel = cancel;
    absl::StatusOr<CheckpointLayout> la = CheckpointLayout::Scan(*wa.fs, wa.path);
    if (!la.ok()) return la.status();
    absl::StatusOr<CheckpointLayout> lb = CheckpointLayout::Scan(*wb.fs, wb.path);
    if (!lb.ok()) return lb.status();
    rep = DiffCheckpoints(*wa.fs, *la, *wb.fs, *lb, o);
    return rep.status();
  }));
  py::list diffs;
  for (const TensorDiff& t : rep->diffs) {
    py::dict d;
    d["kind"] = DiffKindName(t.kind);
    d["name"] = t.name;
    d["detail"] = t.detail;
    d["differing_elements"] = t.differing_elements;
    d["first_index"] = t.first_index;
    d["max_abs_diff"] = t.max_abs_diff;
    diffs.append(d);
  }
  py::dict d;
  d["identical"] = rep->identical_all();
  d["in_both"] = rep->in_both;
  d["identical_tensors"] = rep->identical;
  d["bytes_compared"] = rep->bytes_compared;
  d["diffs"] = diffs;
  return d;
}

py::dict Remap(const std::string& input, const std::string& output,
               const std::vector<std::pair<std::string, std::string>>& rules, bool dry_run,
               bool in_place, bool overwrite) {
  KeyMap km = Unwrap(KeyMap::Create(Rules(rules)));
  ResolvedPath in = Where(input);
  py::dict d;
  if (dry_run) {
    CheckpointLayout ck = ScanPath(input);
    RemapPlan plan = Unwrap(PlanRemap(ck, km));
    d["renames"] = plan.renames;
    d["changed"] = plan.changed;
    d["files"] = std::vector<std::string>();
    return d;
  }
  RemapOptions o;
  o.in_place = in_place;
  o.overwrite = overwrite;
  if (in.remote) o.output_fs = &LocalFileSystem();
  absl::StatusOr<RemapResult> r = absl::UnknownError("not run");
  Interruptible run;
  Check(run.Run([&](const std::atomic<bool>* cancel) {
    o.cancel = cancel;
    r = safeshard::Remap(*in.fs, in.path, in_place ? in.path : output, km, o);
    return r.status();
  }));
  d["renames"] = r->plan.renames;
  d["changed"] = r->plan.changed;
  d["files"] = r->files;
  d["bytes_copied"] = r->bytes_copied;
  return d;
}

std::map<std::string, int> FqnToFileIndex(
    const std::string& path,
    const std::optional<std::vector<std::pair<std::string, std::string>>>& key_mapping) {
  std::vector<std::string> warnings;
  ResolvedPath where = Where(path);
  std::map<std::string, int> m = Unwrap(MappingFromReference(*where.fs, where.path, &warnings));
  if (warnings.size() > 0) {
    py::module_::import("warnings").attr("warn")(absl::StrJoin(warnings, "; "));
  }
  if (!key_mapping || key_mapping->empty()) return m;
  KeyMap km = Unwrap(KeyMap::Create(Rules(*key_mapping)));
  std::map<std::string, int> out;
  for (const auto& [fqn, idx] : m) out[km.Apply(fqn)] = idx;
  return out;
}

int ExtractFileIndex(const std::string& filename) {
  // As the Python seed: the basename's "-IIIII-of-NNNNN.safetensors" index when 1 <= I <= N,
  // model.safetensors is 1, anything else defaults to 1.
  const size_t slash = filename.rfind('/');
  const std::string base = slash == std::string::npos ? filename : filename.substr(slash + 1);
  absl::StatusOr<FileIndex> fi = ParseFileIndex(base);
  if (!fi.ok() || fi->index < 1 || fi->index > fi->count) return 1;
  return fi->index;
}

// A scanned checkpoint kept for repeated slice reads.
class Reader {
 public:
  explicit Reader(const std::string& path) : where_(Where(path)), ck_(ScanPath(path)) {}

  py::tuple Info(const std::string& fqn) const {
    const TensorLayout* t = ck_.FindTensor(fqn);
    if (t == nullptr) {
      Throw(absl::NotFoundError(
          absl::StrCat(ck_.root(), ": no tensor ", internal::Quote(fqn), " in the checkpoint")));
    }
    return py::make_tuple(std::string(DTypeName(t->dtype)), t->shape);
  }
  std::vector<std::string> Names() const {
    std::vector<std::string> out;
    for (const TensorLayout& t : ck_.tensors()) out.push_back(t.name);
    return out;
  }

  void Read(const std::string& fqn, const std::vector<uint64_t>& offsets,
            const std::vector<uint64_t>& sizes, py::handle out) {
    ArrayRef a = View(out, /*writable=*/true, "");
    if (a.shape != sizes) {
      Throw(absl::InvalidArgumentError(absl::StrCat("out has shape [", absl::StrJoin(a.shape, ", "),
                                                    "], the box [", absl::StrJoin(sizes, ", "),
                                                    "]")));
    }
    const TensorLayout* t = ck_.FindTensor(fqn);
    if (t != nullptr && a.dtype != t->dtype &&
        !(BitsOf(a.dtype) == BitsOf(t->dtype) && !IsFloatingPoint(a.dtype))) {
      // Raw bits are fine (uint16 for BF16, uint8 for F8); another float type is not.
      Throw(absl::InvalidArgumentError(absl::StrCat("tensor ", internal::Quote(fqn), " is ",
                                                    DTypeName(t->dtype), "; out is ",
                                                    DTypeName(a.dtype))));
    }
    CheckStillAt(a, fqn);
    Interruptible run;
    Check(run.Run([&](const std::atomic<bool>*) {
      return ReadSlice(*where_.fs, ck_, fqn, offsets, sizes, a.data, a.nbytes);
    }));
  }

 private:
  ResolvedPath where_;
  CheckpointLayout ck_;
};

// ShardWriter keeps the arrays it was given alive (zero-copy) until commit().
class PyShardWriter {
 public:
  PyShardWriter(const std::string& path, int rank, int world_size,
                std::optional<std::map<std::string, int>> fqn_to_index, int thread_count)
      : writer_(path, rank, world_size, fqn_to_index.value_or(std::map<std::string, int>()),
                thread_count) {
    Check(ShardWriter::CheckGroup(rank, world_size,
                                  fqn_to_index.value_or(std::map<std::string, int>())));
  }

  void Add(const std::string& fqn, py::handle array, std::optional<std::vector<uint64_t>> offsets,
           std::optional<std::vector<uint64_t>> global_shape, const std::string& dtype) {
    ArrayRef a = View(array, /*writable=*/false, dtype);
    ShardBuffer b;
    b.fqn = fqn;
    b.dtype = a.dtype;
    b.shape = a.shape;
    b.offsets = offsets.value_or(std::vector<uint64_t>());
    b.global_shape = global_shape.value_or(std::vector<uint64_t>());
    b.data = a.data;
    Check(writer_.Add(std::move(b)));
    arrays_.push_back(std::move(a));
    names_.push_back(fqn);
  }

  py::dict Commit() {
    for (size_t i = 0; i < arrays_.size(); ++i) CheckStillAt(arrays_[i], names_[i]);
    absl::StatusOr<ShardCommit> c = absl::UnknownError("not run");
    Interruptible run;
    Check(run.Run([&](const std::atomic<bool>* cancel) {
      c = writer_.Commit(cancel);
      return c.status();
    }));
    arrays_.clear();  // with the GIL held: releases the buffers
    py::dict d;
    d["files"] = c->files;
    d["bytes"] = c->bytes;
    d["manifest_published"] = c->manifest_published;
    return d;
  }

 private:
  ShardWriter writer_;
  std::vector<ArrayRef> arrays_;
  std::vector<std::string> names_;
};

}  // namespace
}  // namespace safeshard::python

PYBIND11_MODULE(_safeshard, m) {
  using namespace safeshard::python;
  m.doc() = "safeshard's C++ core (see the safeshard package for the documented API)";
  static py::exception<std::runtime_error> checkpoint_error(m, "CheckpointError",
                                                            PyExc_RuntimeError);
  g_checkpoint_error = checkpoint_error.ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      SetPythonError(e.status);
    }
  });
  m.attr("__version__") = std::string(safeshard::kVersion);
  m.def("consolidate", &Consolidate, py::arg("input_dir"), py::arg("output_dir"),
        py::arg("spec_json"), py::arg("fqn_to_index_mapping"), py::arg("progress"), py::arg("rank"),
        py::arg("world_size"), py::arg("host"), py::arg("port"), py::arg("timeout"),
        py::arg("group_key"));
  m.def("inspect_json", &Inspect, py::arg("path"));
  m.def("verify", &Verify, py::arg("path"), py::arg("expect_ranks"), py::arg("reference"),
        py::arg("strict"), py::arg("checksums"));
  m.def("diff", &Diff, py::arg("a"), py::arg("b"), py::arg("headers_only"), py::arg("atol"),
        py::arg("rtol"));
  m.def("remap", &Remap, py::arg("input_dir"), py::arg("output_dir"), py::arg("rules"),
        py::arg("dry_run"), py::arg("in_place"), py::arg("overwrite"));
  m.def("get_fqn_to_file_index_mapping", &FqnToFileIndex, py::arg("reference_model_path"),
        py::arg("key_mapping") = py::none());
  m.def("extract_file_index", &ExtractFileIndex, py::arg("filename"));
  py::class_<Reader>(m, "Reader")
      .def(py::init<const std::string&>(), py::arg("path"))
      .def("info", &Reader::Info, py::arg("fqn"))
      .def("names", &Reader::Names)
      .def("read", &Reader::Read, py::arg("fqn"), py::arg("offsets"), py::arg("sizes"),
           py::arg("out"));
  py::class_<PyShardWriter>(m, "ShardWriter")
      .def(py::init<const std::string&, int, int, std::optional<std::map<std::string, int>>, int>(),
           py::arg("path"), py::arg("rank"), py::arg("world_size"),
           py::arg("fqn_to_index_mapping") = py::none(), py::arg("thread_count") = 1)
      .def("add", &PyShardWriter::Add, py::arg("fqn"), py::arg("array"),
           py::arg("offsets") = py::none(), py::arg("global_shape") = py::none(),
           py::arg("dtype") = "")
      .def("commit", &PyShardWriter::Commit);
}
