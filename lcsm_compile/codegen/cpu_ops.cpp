// CPU implementations of the per-step lcsm ops, registered for the CPU dispatch key when
// lcsm_compile.codegen.cpu_ops activates them (docs/kernels.md, "C++ step ops").
//
// Each op does in C++ what its Python body (runtime/state_ops.py, runtime/modal.py) does on
// the common path, calling the same native C kernels (codegen/native.py's library, passed in
// as function addresses), so the outputs are the same bits; every other case (another dtype,
// a layout, the torch kernels asked for, an error to report) calls the Python body itself.
// A step then pays the dispatcher's C++ call instead of a Python frame per op.
//
//   ring_step      the short convolution's ring buffer (native lcsm_ring_step_*)
//   online_diag    the red cells of one group member (native lcsm_red_step_*)
//   online_advance the steps without tile work only: meta[0] += 1 inside a span the Python
//                  engine published (set_quiet); the others run the engine in Python
//   modal_step     the modal recurrence (native lcsm_modal_step_*)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#include <torch/csrc/utils/pybind.h>

#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace py = pybind11;

namespace {

using RingFn = void (*)(void*, const void*, const void*, const void*, void*, int64_t, int64_t, int64_t, int64_t);
using RedFn = void (*)(const int64_t*, const void*, void*, int64_t);
using ModalFn = void (*)(double*, const double*, const double*, const void*, void*, int64_t, int64_t, int64_t,
                         int64_t);

struct Quiet {  // steps [from, next) of the engine with this meta need no tile work
  int64_t uid, prefill, blk_start, from, next;
};

RingFn g_ring[2] = {nullptr, nullptr};  // [fp32, fp64]
RedFn g_red[2] = {nullptr, nullptr};
ModalFn g_modal[2] = {nullptr, nullptr};
constexpr int64_t kNativeCode = 1;  // codegen.STEP_CODES["native"]: meta[4] of native red cells

std::mutex g_mu;
std::unordered_set<intptr_t> g_python_only;  // weights (ring w, modal poles) with kernels != auto/native
std::unordered_map<intptr_t, Quiet> g_quiet;  // meta data_ptr -> quiet span
py::object* g_fallback = nullptr;             // dict name -> the Python body (never freed: used at exit)
torch::Library* g_lib = nullptr;             // the CPU registrations while active (not freed at exit)

void deactivate() {
  delete g_lib;  // removes the registrations: the Python bodies run again
  g_lib = nullptr;
}

int dindex(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return 0;
  if (t.scalar_type() == at::kDouble) return 1;
  return -1;
}

bool python_only(const at::Tensor& w) {
  std::lock_guard<std::mutex> g(g_mu);
  return g_python_only.count(reinterpret_cast<intptr_t>(w.data_ptr())) != 0;
}

py::object opt(const std::optional<at::Tensor>& t) { return t.has_value() ? py::cast(*t) : py::none(); }

template <typename... A>
py::object call_python(const char* name, A&&... args) {
  py::gil_scoped_acquire gil;
  return (*g_fallback)[name](std::forward<A>(args)...);
}

at::Tensor ring_step(const at::Tensor& u, const at::Tensor& buf, const at::Tensor& w,
                     const std::optional<at::Tensor>& bias, const at::Tensor& pos) {
  const int d = dindex(buf);
  const bool fast = d >= 0 && g_ring[d] && u.scalar_type() == buf.scalar_type() &&
                    w.scalar_type() == buf.scalar_type() && u.dim() == 2 && buf.dim() == 3 && w.dim() == 2 &&
                    buf.is_contiguous() && w.is_contiguous() && u.size(0) == buf.size(0) &&
                    u.size(1) == buf.size(1) && w.size(0) == buf.size(1) && w.size(1) == buf.size(2) &&
                    buf.size(2) > 0 && pos.scalar_type() == at::kLong && pos.numel() == 1 &&
                    (!bias.has_value() || (bias->scalar_type() == buf.scalar_type() && bias->is_contiguous() &&
                                           bias->numel() == buf.size(1))) &&
                    !python_only(w);
  const int64_t t = fast ? *pos.data_ptr<int64_t>() : -1;
  if (!fast || t < 0) {
    py::gil_scoped_acquire gil;
    return (*g_fallback)["ring_step"](u, buf, w, opt(bias), pos).cast<at::Tensor>();
  }
  const at::Tensor uc = u.contiguous();
  at::Tensor y = at::empty_like(uc);
  g_ring[d](buf.data_ptr(), w.data_ptr(), bias.has_value() ? bias->data_ptr() : nullptr, uc.data_ptr(),
            y.data_ptr(), buf.size(0), buf.size(1), buf.size(2), t);
  return y;
}

at::Tensor online_diag(const at::Tensor& u, const at::Tensor& blk_hist, const at::Tensor& blk_acc,
                       const at::Tensor& kb, const at::Tensor& meta, int64_t c0) {
  const int d = dindex(blk_hist);
  bool fast = d >= 0 && g_red[d] && meta.scalar_type() == at::kLong && meta.is_contiguous() && meta.numel() >= 5 &&
              u.scalar_type() == blk_hist.scalar_type() && blk_acc.scalar_type() == blk_hist.scalar_type() &&
              kb.scalar_type() == blk_hist.scalar_type() && u.dim() == 2 && blk_hist.dim() == 3 &&
              blk_hist.is_contiguous() && blk_acc.is_contiguous() && kb.is_contiguous() &&
              blk_acc.sizes() == blk_hist.sizes() && kb.numel() == blk_hist.size(0) * blk_hist.size(2) &&
              u.size(0) == blk_hist.size(1) && c0 >= 0 && c0 + u.size(1) <= blk_hist.size(2);
  int64_t r = -1;
  if (fast) {
    const int64_t* m = meta.data_ptr<int64_t>();
    r = m[0] - m[2];
    fast = m[4] == kNativeCode && r >= 0 && r < blk_hist.size(0);
  }
  if (!fast) {
    py::gil_scoped_acquire gil;
    return (*g_fallback)["online_diag"](u, blk_hist, blk_acc, kb, meta, c0).cast<at::Tensor>();
  }
  const at::Tensor uc = u.contiguous();
  at::Tensor y = at::empty_like(uc);
  const int64_t p[8] = {reinterpret_cast<int64_t>(blk_hist.data_ptr()), reinterpret_cast<int64_t>(blk_acc.data_ptr()),
                        reinterpret_cast<int64_t>(kb.data_ptr()), blk_hist.size(0), blk_hist.size(1),
                        blk_hist.size(2), c0, u.size(1)};
  g_red[d](p, uc.data_ptr(), y.data_ptr(), r);
  return y;
}

void online_advance(const at::Tensor& hist, const at::Tensor& acc, const at::Tensor& blk_hist,
                    const at::Tensor& blk_acc, const at::Tensor& meta, const at::Tensor& k, at::IntArrayRef config) {
  if (meta.scalar_type() == at::kLong && meta.is_contiguous() && meta.numel() >= 5) {
    int64_t* m = meta.data_ptr<int64_t>();
    std::lock_guard<std::mutex> g(g_mu);
    auto it = g_quiet.find(reinterpret_cast<intptr_t>(m));
    if (it != g_quiet.end()) {
      const Quiet& q = it->second;
      if (q.uid == m[3] && q.prefill == m[1] && q.blk_start == m[2] && q.from <= m[0] && m[0] < q.next) {
        m[0] += 1;  // no tile work at this step: what the engine's advance does (engine.py)
        return;
      }
    }
  }
  py::gil_scoped_acquire gil;
  (*g_fallback)["online_advance"](hist, acc, blk_hist, blk_acc, meta, k, config.vec());
}

at::Tensor modal_step(const at::Tensor& u, const at::Tensor& state, const at::Tensor& poles,
                      const at::Tensor& residues, const at::Tensor& pos) {
  const int d = dindex(u);
  const bool fast = d >= 0 && g_modal[d] && u.dim() == 2 && state.dim() == 5 && state.size(0) == 2 &&
                    state.size(4) == 2 && u.size(0) == state.size(1) && u.size(1) == state.size(2) &&
                    state.scalar_type() == at::kDouble && poles.scalar_type() == at::kDouble &&
                    residues.scalar_type() == at::kDouble && state.is_contiguous() && poles.is_contiguous() &&
                    residues.is_contiguous() && poles.numel() == state.size(2) * state.size(3) * 2 &&
                    residues.numel() == poles.numel() && pos.scalar_type() == at::kLong && pos.numel() == 1 &&
                    !python_only(poles);
  const int64_t t = fast ? *pos.data_ptr<int64_t>() : -1;
  if (!fast || t < 0) {
    py::gil_scoped_acquire gil;
    return (*g_fallback)["modal_step"](u, state, poles, residues, pos).cast<at::Tensor>();
  }
  const at::Tensor uc = u.contiguous();
  at::Tensor y = at::empty({u.size(0), u.size(1)}, u.options());
  g_modal[d](state.data_ptr<double>(), poles.data_ptr<double>(), residues.data_ptr<double>(), uc.data_ptr(),
             y.data_ptr(), state.size(1), state.size(2), state.size(3), t);
  return y;
}

template <typename F>
F fn_at(const py::dict& addrs, const char* name) {
  if (!addrs.contains(name)) return nullptr;
  return reinterpret_cast<F>(static_cast<intptr_t>(addrs[name].cast<int64_t>()));
}

// addrs: kernel name -> address (0 or absent: that kernel falls back); fallbacks: op -> Python body
void activate(const py::dict& addrs, const py::dict& fallbacks, const std::vector<std::string>& ops) {
  g_ring[0] = fn_at<RingFn>(addrs, "lcsm_ring_step_f32");
  g_ring[1] = fn_at<RingFn>(addrs, "lcsm_ring_step_f64");
  g_red[0] = fn_at<RedFn>(addrs, "lcsm_red_step_f32");
  g_red[1] = fn_at<RedFn>(addrs, "lcsm_red_step_f64");
  g_modal[0] = fn_at<ModalFn>(addrs, "lcsm_modal_step_f32");
  g_modal[1] = fn_at<ModalFn>(addrs, "lcsm_modal_step_f64");
  if (g_fallback == nullptr) g_fallback = new py::object();
  *g_fallback = fallbacks;
  deactivate();
  g_lib = new torch::Library(torch::Library::IMPL, "lcsm", c10::DispatchKey::CPU, __FILE__, __LINE__);
  for (const auto& op : ops) {
    if (op == "ring_step") g_lib->impl("ring_step", TORCH_FN(ring_step));
    else if (op == "online_diag") g_lib->impl("online_diag", TORCH_FN(online_diag));
    else if (op == "online_advance") g_lib->impl("online_advance", TORCH_FN(online_advance));
    else if (op == "modal_step") g_lib->impl("modal_step", TORCH_FN(modal_step));
    else throw std::invalid_argument("lcsm cpu_ops: no C++ implementation of " + op);
  }
}

void reactivate() {  // the registrations again, with the addresses and fallbacks of the last activate
  deactivate();
  g_lib = new torch::Library(torch::Library::IMPL, "lcsm", c10::DispatchKey::CPU, __FILE__, __LINE__);
  g_lib->impl("ring_step", TORCH_FN(ring_step));
  g_lib->impl("online_diag", TORCH_FN(online_diag));
  g_lib->impl("online_advance", TORCH_FN(online_advance));
  g_lib->impl("modal_step", TORCH_FN(modal_step));
}

void set_python_only(int64_t ptr, bool on) {
  std::lock_guard<std::mutex> g(g_mu);
  if (on) g_python_only.insert(static_cast<intptr_t>(ptr));
  else g_python_only.erase(static_cast<intptr_t>(ptr));
}

void set_quiet(const at::Tensor& meta, int64_t uid, int64_t prefill, int64_t blk_start, int64_t from, int64_t next) {
  std::lock_guard<std::mutex> g(g_mu);
  if (g_quiet.size() > 4096) g_quiet.clear();  // engines come and go; a miss only costs the Python path
  g_quiet[reinterpret_cast<intptr_t>(meta.data_ptr())] = Quiet{uid, prefill, blk_start, from, next};
}

void clear_quiet(const at::Tensor& meta) {
  std::lock_guard<std::mutex> g(g_mu);
  g_quiet.erase(reinterpret_cast<intptr_t>(meta.data_ptr()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("activate", &activate, "register the C++ CPU kernels of these ops (addresses, Python fallbacks, op names)");
  m.def("deactivate", &deactivate, "remove the CPU registrations (the Python bodies run again)");
  m.def("reactivate", &reactivate, "register again after deactivate, as the last activate did");
  m.def("set_python_only", &set_python_only, "route a ring's / modal filter's weights to the Python body");
  m.def("set_quiet", &set_quiet, "publish a span of steps without tile work for one engine's meta");
  m.def("clear_quiet", &clear_quiet, "forget the span of one engine's meta");
}
