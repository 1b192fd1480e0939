// The MR-LFADS time loop (forward and hand-written backprop through time) in C++.
//
// Same steps, buffers and layouts as the Python loop in mrlfads/recurrence.py, which stays
// the reference (tests compare the two, and both against mrlfads/oracle.py). Why it exists:
// on a CPU the Python loop spends most of a training step dispatching ~100 small ops per
// time bin. Here matmuls still go to ATen (MKL), but the interpreter is gone and each GRU
// step's elementwise math (gates, clip, and their derivatives) is one fused pass over rows.
//
// Layout conventions (as in recurrence.py): per-step tensors are (R, B, width) and
// per-pair (P, B, width); saved sequences are region-major (R, T', B, width). Inputs,
// weights, outputs and saved activations are the structures of mrlfads/loop_io.py
// (declared again below, field for field, and checked against it on first load); they
// arrive and leave as tensor lists in field order, absent fields as empty tensors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace {

using at::Tensor;
using OptT = std::optional<Tensor>;

// ---------------------------------------------------------------- elementwise math
// float: a Cephes-style exp (relative error ~2e-7) that the compiler can vectorise, unlike
// libm's; double (used by the tests' float64 checks and gradcheck): libm, exact to rounding.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);  // NaN passes through both
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid_of(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline double sigmoid_of(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline float tanh_of(float x) { return 1.0f - 2.0f / (1.0f + exp_approx(2.0f * x)); }
inline double tanh_of(double x) { return std::tanh(x); }

// A (R, B, W) tensor addressed by rows; W must have unit stride (R and B may be 0-strided).
template <typename T>
struct Rows {
  T* p;
  int64_t s0, s1;
  T* at(int64_t r, int64_t b) const { return p + r * s0 + b * s1; }
};

template <typename T>
Rows<const T> in_rows(const Tensor& t) {
  TORCH_CHECK(t.dim() == 3 && (t.stride(2) == 1 || t.size(2) <= 1),
              "mrlfads native loop: expected a (R, B, W) tensor with unit last stride");
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1)};
}

template <typename T>
Rows<T> out_rows(const Tensor& t) {
  TORCH_CHECK(t.dim() == 3 && (t.stride(2) == 1 || t.size(2) <= 1),
              "mrlfads native loop: expected a (R, B, W) buffer with unit last stride");
  return {t.mutable_data_ptr<T>(), t.stride(0), t.stride(1)};
}

// Inputs that may come from autograd with any strides: unit last stride, else a copy.
Tensor unit_last(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// Internal sequence buffers, reused across calls. Training repeats the same shapes every
// step, and fresh multi-MB allocations each step cost page faults that took ~30% of a
// batch-64 step. A buffer is handed out again only when nothing else holds it or any view
// of it (tensor and storage use counts of 1: only the pool), so reuse is never visible.
class BufferPool {
 public:
  Tensor take(at::IntArrayRef shape, const at::TensorOptions& o) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = items_.begin(); it != items_.end(); ++it) {
      if (idle(*it) && it->sizes() == shape && it->dtype() == o.dtype() &&
          it->device() == o.device()) {
        Tensor t = *it;  // move to the back: most recently used
        items_.erase(it);
        items_.push_back(t);
        return t;
      }
    }
    Tensor t = at::empty(shape, o);
    items_.push_back(t);
    trim();
    return t;
  }

 private:
  static constexpr int64_t kMaxIdleBytes = int64_t(1) << 30;
  static bool idle(const Tensor& t) { return t.use_count() == 1 && t.storage().use_count() == 1; }
  void trim() {  // drop the least recently used idle buffers beyond kMaxIdleBytes
    int64_t bytes = 0;
    for (const auto& t : items_) bytes += idle(t) ? t.nbytes() : 0;
    for (auto it = items_.begin(); it != items_.end() && bytes > kMaxIdleBytes;) {
      if (idle(*it)) {
        bytes -= it->nbytes();
        it = items_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::mutex mu_;
  std::vector<Tensor> items_;
};

bool poison_buffers = false;  // tests: fill every buffer handed out with NaN

Tensor buffer(at::IntArrayRef shape, const at::TensorOptions& o) {
  static BufferPool pool;
  Tensor t = pool.take(shape, o);
  if (poison_buffers) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

void set_poison(bool on) { poison_buffers = on; }

// What goes back to Python is an alias (a new tensor object on the same memory): a tensor
// that Python has seen stays referenced by its preserved Python object, so handing out the
// pool's own tensor would keep it busy forever; the alias only holds the storage.
std::vector<Tensor> handed_out(std::vector<Tensor> ts) {
  for (auto& t : ts) t = t.alias();
  return ts;
}

template <typename F>
void for_rows(int64_t R, int64_t B, int64_t W, const F& body) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(W, 1));
  at::parallel_for(0, R * B, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) body(k / B, k % B);
  });
}

// One row of a clipped GRU step (PyTorch's r, z, n gate order, like
// recurrence._gru_fwd): the new state into o, and what backward needs (sigmoid(r, z), n,
// the hidden share of the n gate) into rz / n / hn. Plain loops the compiler vectorises.
template <typename T, bool CLIP>
void gru_forward_row(const T* __restrict x, const T* __restrict g, const T* __restrict hp,
                     T* __restrict o, T* __restrict rzp, T* __restrict np, T* __restrict hnp,
                     int64_t H, T c) {
  for (int64_t j = 0; j < H; ++j) {
    const T rv = sigmoid_of(x[j] + g[j]);
    const T zv = sigmoid_of(x[H + j] + g[H + j]);
    const T hv = g[2 * H + j];
    const T nv = tanh_of(x[2 * H + j] + rv * hv);
    T pre = nv + zv * (hp[j] - nv);
    if constexpr (CLIP) pre = std::min(std::max(pre, -c), c);
    o[j] = pre;
    rzp[j] = rv;
    rzp[H + j] = zv;
    np[j] = nv;
    hnp[j] = hv;
  }
}

// One row of its backward: d (the gradient w.r.t. the new state) comes in in dp and the
// gradient w.r.t. the previous state's elementwise path (not yet through W_hh) goes out
// there; d(xg) into dx and d(hg) into dh.
template <typename T, bool CLIP>
void gru_backward_row(const T* __restrict rzp, const T* __restrict np,
                      const T* __restrict hnp, const T* __restrict hp, T* __restrict dxp,
                      T* __restrict dhp, T* __restrict dp, int64_t H, T c) {
  for (int64_t j = 0; j < H; ++j) {
    T d = dp[j];
    const T rv = rzp[j], zv = rzp[H + j], nv = np[j];
    const T h_n = hp[j] - nv;
    if constexpr (CLIP) {  // clamp passes the gradient only where its input was inside
      const T pre = nv + zv * h_n;
      d = std::abs(pre) <= c ? d : T(0);
    }
    const T da = d * (T(1) - zv) * (T(1) - nv * nv);  // n = tanh(a)
    const T dr = da * hnp[j] * rv * (T(1) - rv);
    const T dz = d * h_n * zv * (T(1) - zv);
    dxp[j] = dr;
    dxp[H + j] = dz;
    dxp[2 * H + j] = da;
    dhp[j] = dr;
    dhp[H + j] = dz;
    dhp[2 * H + j] = da * rv;
    dp[j] = d * zv;
  }
}

// gru_forward_row over all (R, B) rows; clip < 0 means no clip.
void gru_forward(const Tensor& xg_, const Tensor& hg_, const Tensor& h, const Tensor& out,
                 const Tensor& rz, const Tensor& n, const Tensor& hn, double clip) {
  const Tensor xg = unit_last(xg_), hg = unit_last(hg_);
  const int64_t R = h.size(0), B = h.size(1), H = h.size(2);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "mrlfads_gru_forward", [&] {
    using T = scalar_t;
    const auto X = in_rows<T>(xg), HG = in_rows<T>(hg), HP = in_rows<T>(h);
    const auto O = out_rows<T>(out), RZ = out_rows<T>(rz), N = out_rows<T>(n),
               HN = out_rows<T>(hn);
    const T c = static_cast<T>(clip);
    const auto row = clip >= 0 ? gru_forward_row<T, true> : gru_forward_row<T, false>;
    for_rows(R, B, 3 * H, [&](int64_t r, int64_t b) {
      row(X.at(r, b), HG.at(r, b), HP.at(r, b), O.at(r, b), RZ.at(r, b), N.at(r, b),
          HN.at(r, b), H, c);
    });
  });
}

// Backward of gru_forward for the incoming gradient dout = a + b * mask (b, mask optional),
// written row by row into dprev first, then replaced there by d(h_prev)'s elementwise path.
void gru_backward(const Tensor& a_, const OptT& b_, const OptT& mask_, const Tensor& rz,
                  const Tensor& n, const Tensor& hn, const Tensor& hprev, double clip,
                  const Tensor& dx, const Tensor& dh, const Tensor& dprev) {
  const Tensor a = unit_last(a_);
  const Tensor b = b_ ? unit_last(*b_) : Tensor();
  const Tensor mask = (b_ && mask_) ? unit_last(*mask_) : Tensor();
  const int64_t R = hprev.size(0), B = hprev.size(1), H = hprev.size(2);
  AT_DISPATCH_FLOATING_TYPES(hprev.scalar_type(), "mrlfads_gru_backward", [&] {
    using T = scalar_t;
    const auto A = in_rows<T>(a), RZ = in_rows<T>(rz), N = in_rows<T>(n),
               HN = in_rows<T>(hn), HP = in_rows<T>(hprev);
    const auto Bt = b.defined() ? in_rows<T>(b) : Rows<const T>{nullptr, 0, 0};
    const auto M = mask.defined() ? in_rows<T>(mask) : Rows<const T>{nullptr, 0, 0};
    const auto DX = out_rows<T>(dx), DH = out_rows<T>(dh), DP = out_rows<T>(dprev);
    const bool has_b = b.defined(), has_m = mask.defined();
    const T c = static_cast<T>(clip);
    const auto row = clip >= 0 ? gru_backward_row<T, true> : gru_backward_row<T, false>;
    for_rows(R, B, 3 * H, [&](int64_t r, int64_t bi) {
      const T* __restrict ap = A.at(r, bi);
      T* __restrict dp = DP.at(r, bi);
      if (!has_b) {
        std::copy(ap, ap + H, dp);
      } else if (!has_m) {
        const T* __restrict bp = Bt.at(r, bi);
        for (int64_t j = 0; j < H; ++j) dp[j] = ap[j] + bp[j];
      } else {
        const T* __restrict bp = Bt.at(r, bi);
        const T* __restrict mp = M.at(r, bi);
        for (int64_t j = 0; j < H; ++j) dp[j] = ap[j] + bp[j] * mp[j];
      }
      row(RZ.at(r, bi), N.at(r, bi), HN.at(r, bi), HP.at(r, bi), DX.at(r, bi), DH.at(r, bi),
          dp, H, c);
    });
  });
}

inline float exp_of(float x) { return exp_approx(x); }
inline double exp_of(double x) { return std::exp(x); }

// The posterior log-variance bound of layers.bounded_logvar: hi - softplus(hi - x), and
// its derivative sigmoid(hi - x). softplus(y) = y for y > 20 (log1p(exp(y)) - y < 3e-9).
template <typename T>
inline T bounded_logvar(T x, T hi) {
  const T y = hi - x;
  return y > T(20) ? x : hi - std::log1p(std::exp(y));
}
template <typename T>
inline T bounded_logvar_grad(T x, T hi) {
  return T(1) / (T(1) + std::exp(x - hi));
}

// A posterior sample mean + sqrt(exp(bounded(logvar)) + floor) * eps (or the mean) into
// `out`, from params (R, B, 2w) = [mean | logvar]. One pass: the rows are narrow (w =
// com_dim or co_dim), where separate exp / sqrt / addcmul ops cost ~6 ns per element each.
void sample_into(const Tensor& out, const Tensor& params_, int64_t w, const OptT& eps_,
                 double var_floor, double logvar_max) {
  const Tensor params = unit_last(params_);
  if (!eps_) {
    out.copy_(params.narrow(-1, 0, w));
    return;
  }
  const Tensor eps = unit_last(*eps_);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "mrlfads_sample_into", [&] {
    using T = scalar_t;
    const auto PR = in_rows<T>(params), E = in_rows<T>(eps);
    const auto O = out_rows<T>(out);
    const T floor = static_cast<T>(var_floor), hi = static_cast<T>(logvar_max);
    for_rows(out.size(0), out.size(1), 2 * w, [&](int64_t r, int64_t b) {
      const T* __restrict mp = PR.at(r, b);
      const T* __restrict e = E.at(r, b);
      T* __restrict o = O.at(r, b);
      for (int64_t j = 0; j < w; ++j)
        o[j] = mp[j] + std::sqrt(exp_of(bounded_logvar(mp[w + j], hi)) + floor) * e[j];
    });
  });
}

// Gradient w.r.t. posterior params (mean, logvar) written into `out` (R, B, 2w), given the
// gradient `d` w.r.t. the sample (or w.r.t. the mean when not sampling: eps absent), plus
// `add`, a gradient that reaches the params directly, when given. One pass, as above.
void posterior_grad(const Tensor& out, const Tensor& d_, const Tensor& params_,
                    const OptT& eps_, const OptT& add_, double var_floor, double logvar_max) {
  const Tensor d = unit_last(d_), params = unit_last(params_);
  const Tensor eps = eps_ ? unit_last(*eps_) : Tensor();
  const Tensor add = add_ ? unit_last(*add_) : Tensor();
  const int64_t w = d.size(2);
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "mrlfads_posterior_grad", [&] {
    using T = scalar_t;
    const Rows<const T> absent{nullptr, 0, 0};
    const auto D = in_rows<T>(d), PR = in_rows<T>(params);
    const auto E = eps.defined() ? in_rows<T>(eps) : absent;
    const auto A = add.defined() ? in_rows<T>(add) : absent;
    const auto O = out_rows<T>(out);
    const T floor = static_cast<T>(var_floor), hi = static_cast<T>(logvar_max);
    for_rows(d.size(0), d.size(1), 2 * w, [&](int64_t r, int64_t b) {
      const T* __restrict dp = D.at(r, b);
      const T* __restrict lv = PR.at(r, b) + w;
      T* __restrict o = O.at(r, b);
      for (int64_t j = 0; j < w; ++j) o[j] = dp[j];
      if (E.p) {
        const T* __restrict e = E.at(r, b);
        for (int64_t j = 0; j < w; ++j) {
          const T v = exp_of(bounded_logvar(lv[j], hi));
          const T slope = bounded_logvar_grad(lv[j], hi);
          o[w + j] = dp[j] * e[j] * v * slope / (T(2) * std::sqrt(v + floor));
        }
      } else {
        for (int64_t j = 0; j < w; ++j) o[w + j] = T(0);
      }
      if (A.p) {
        const T* __restrict a = A.at(r, b);
        for (int64_t j = 0; j < 2 * w; ++j) o[j] += a[j];
      }
    });
  });
}

// sum over time and batch of x^T dy: (R, T', B, I), (R, T', B, O) -> (R, I, O)
Tensor wgrad(const Tensor& x, const Tensor& dy) {
  const int64_t R = x.size(0);
  return at::bmm(x.reshape({R, -1, x.size(3)}).transpose(1, 2), dy.reshape({R, -1, dy.size(3)}));
}

// (R, T', B, O) -> (R, 1, O): one reduction over the T'*B rows
Tensor bgrad(const Tensor& dy) { return dy.reshape({dy.size(0), -1, dy.size(3)}).sum(1, true); }

// ---------------------------------------------------------------- the loop's structures
// The same fields, in the same order, as mrlfads/loop_io.py's named tuples (the Python side
// checks the names on first load: loop_fields). They cross the operator boundary as tensor
// lists in field order; an absent field is an empty tensor, undefined here.
#define LOOP_INPUTS(X) \
  X(g0) X(f0) X(ce) X(gx) X(eps_msg) X(eps_co) X(keep) X(keep_u) X(drop_f) X(drop_g) X(src_index)
#define LOOP_WEIGHTS(X)                                                                       \
  X(gen_w_hh) X(gen_b_hh) X(fac_w) X(gen_w_iu) X(con_w_ie) X(con_b_ih) X(con_w_if) X(con_w_hh) \
  X(con_b_hh) X(co_w) X(co_b) X(msg_w) X(msg_b)
#define LOOP_OUTPUTS(X) X(factors) X(co) X(inputs) X(msg_params) X(messages)
#define LOOP_SAVED(X) \
  X(Gs) X(GD) X(Xs) X(Hs) X(FD) X(ST) X(gen_rz) X(gen_n) X(gen_hn) X(con_rz) X(con_n) X(con_hn)
#define GRU_SAVED(X) X(states) X(rz) X(n) X(hn)

#define FIELD_DECL(name) Tensor name;
#define FIELD_NAME(name) #name,
#define FIELD_COUNT(name) +1
#define FIELD_UNPACK(name) s.name = present(ts[k++]);
#define FIELD_PACK(name) out.push_back(name.defined() ? name : at::empty({0}, absent));

Tensor present(const Tensor& t) { return t.defined() && t.numel() > 0 ? t : Tensor(); }

#define LOOP_STRUCT(Name, FIELDS)                                                   \
  struct Name {                                                                     \
    FIELDS(FIELD_DECL)                                                              \
    static constexpr const char* kNames[] = {FIELDS(FIELD_NAME)};                   \
    static constexpr int64_t kSize = 0 FIELDS(FIELD_COUNT);                         \
    static Name unpack(at::TensorList ts) {                                         \
      TORCH_CHECK(static_cast<int64_t>(ts.size()) == kSize, "mrlfads native loop: " \
                  #Name " takes ", kSize, " tensors, got ", ts.size());             \
      Name s;                                                                       \
      int64_t k = 0;                                                                \
      FIELDS(FIELD_UNPACK)                                                          \
      return s;                                                                     \
    }                                                                               \
    void pack_into(std::vector<Tensor>& out, const at::TensorOptions& absent) const { \
      FIELDS(FIELD_PACK)                                                            \
    }                                                                               \
  };

LOOP_STRUCT(Inputs, LOOP_INPUTS)
LOOP_STRUCT(Weights, LOOP_WEIGHTS)
LOOP_STRUCT(Outputs, LOOP_OUTPUTS)
LOOP_STRUCT(Saved, LOOP_SAVED)
LOOP_STRUCT(GruSaved, GRU_SAVED)

template <typename S>
std::string names_of() {
  std::string out;
  for (const char* n : S::kNames) out += (out.empty() ? "" : ",") + std::string(n);
  return out;
}

std::string loop_fields(c10::string_view which) {
  if (which == "inputs") return names_of<Inputs>();
  if (which == "weights") return names_of<Weights>();
  if (which == "outputs") return names_of<Outputs>();
  if (which == "saved") return names_of<Saved>();
  if (which == "gru_saved") return names_of<GruSaved>();
  TORCH_CHECK(false, "mrlfads native loop: no structure named ", which);
}

// Sizes and switches of one call (mrlfads.loop_io.LoopSpec) and the posterior bounds.
struct Spec {
  int64_t R, P, C, U, T;
  double clip;
  bool src_is_g, sample, detach_src;
  double var_floor, logvar_max;
};

// step i of a time-major input (T', ...) / of a region-major sequence (R, T', ...), if present
OptT step_of(const Tensor& t, int64_t i) { return t.defined() ? OptT(t.select(0, i)) : std::nullopt; }
OptT seq_step(const Tensor& t, int64_t i) { return t.defined() ? OptT(t.select(1, i)) : std::nullopt; }

// ---------------------------------------------------------------- the MR-LFADS loop
// Returns Outputs then Saved, in field order (mrlfads.recurrence.forward is the reference).
std::vector<Tensor> loop_forward(const Spec& sp, const Inputs& x, const Weights& w) {
  at::NoGradGuard no_grad;
  const int64_t R = sp.R, P = sp.P, C = sp.C, U = sp.U, Tp = sp.T;
  const int64_t B = x.g0.size(1), G = x.g0.size(2), F = w.fac_w.size(2);
  const bool con = x.ce.defined(), seq = x.gx.dim() == 4;
  const auto o = x.g0.options();
  Outputs out;
  Saved s;
  s.Gs = buffer({R, Tp + 1, B, G}, o);
  s.Gs.select(1, 0).copy_(x.g0);
  out.factors = at::empty({R, Tp, B, F}, o);
  if (x.drop_g.defined()) s.GD = buffer({R, Tp, B, G}, o);
  const Tensor GD = x.drop_g.defined() ? s.GD : s.Gs.narrow(1, 1, Tp);
  if (w.gen_w_iu.defined()) s.Xs = buffer({R, Tp, B, w.gen_w_iu.size(1)}, o);
  const int64_t Cn = con ? w.con_w_hh.size(1) : 0;
  if (con) {
    s.Hs = buffer({R, Tp + 1, B, Cn}, o);
    s.Hs.select(1, 0).zero_();
    s.FD = buffer({R, Tp, B, F}, o);
    out.co = at::empty({R, Tp, B, 2 * U}, o);
    out.inputs = at::empty({R, Tp, B, U}, o);
    s.con_rz = buffer({R, Tp, B, 2 * Cn}, o);
    s.con_n = buffer({R, Tp, B, Cn}, o);
    s.con_hn = buffer({R, Tp, B, Cn}, o);
  }
  if (P) {
    s.ST = buffer({P, Tp, B, w.msg_w.size(1)}, o);
    out.msg_params = at::empty({P, Tp, B, 2 * C}, o);
    out.messages = at::empty({P, Tp, B, C}, o);
  }
  s.gen_rz = buffer({R, Tp, B, 2 * G}, o);
  s.gen_n = buffer({R, Tp, B, G}, o);
  s.gen_hn = buffer({R, Tp, B, G}, o);
  // per-step gate pre-activations, written in place (fresh 100s-of-kB blocks every step
  // went back and forth to the OS)
  Tensor hg_g = buffer({R, B, 3 * G}, o), xg_g = buffer({R, B, 3 * G}, o);
  Tensor hg_c, xg_c, CI;
  if (con) {
    hg_c = buffer({R, B, 3 * Cn}, o);
    xg_c = buffer({R, B, 3 * Cn}, o);
    // the controller's input gates from the ci encoder, for the whole sequence in one GEMM,
    // into a recycled buffer; the bias is added per step (copying it into this 56 MB block,
    // fresh each step, cost ~4% of a batch-64 step)
    CI = buffer({R, Tp, B, 3 * Cn}, o);
    Tensor ci_flat = CI.view({R, Tp * B, 3 * Cn});
    at::bmm_out(ci_flat, x.ce.reshape({R, Tp * B, x.ce.size(3)}), w.con_w_ie);
  }
  Tensor f = x.f0;
  for (int64_t i = 0; i < Tp; ++i) {
    const Tensor g = s.Gs.select(1, i);
    if (P) {
      const Tensor st = s.ST.select(1, i);
      st.copy_((sp.src_is_g ? g : f).index_select(0, x.src_index));
      Tensor m = out.messages.select(1, i), mpi = out.msg_params.select(1, i);
      // (P, B, 2C); straight into msg_params unless silencing rewrites the means kept there
      const Tensor mp = x.keep.defined() ? at::baddbmm(w.msg_b, st, w.msg_w)
                                         : at::baddbmm_out(mpi, w.msg_b, st, w.msg_w);
      sample_into(m, mp, C, sp.sample ? step_of(x.eps_msg, i) : std::nullopt, sp.var_floor,
                  sp.logvar_max);
      if (x.keep.defined()) {
        const Tensor k = x.keep.select(0, i);
        m.mul_(k);
        Tensor kept_mean = mpi.narrow(-1, 0, C);
        at::mul_out(kept_mean, mp.narrow(-1, 0, C), k);
        mpi.narrow(-1, C, C).copy_(mp.narrow(-1, C, C));
      }
      // (P, B, C) -> (R_dst, R-1, B, C) -> (R_dst, B, R-1, C) into x's message slots
      s.Xs.select(1, i).narrow(-1, U, (R - 1) * C).view({R, B, R - 1, C})
          .copy_(m.view({R, R - 1, B, C}).transpose(1, 2));
    }
    if (con) {
      const Tensor h = s.Hs.select(1, i);
      Tensor fd = s.FD.select(1, i);
      if (x.drop_f.defined()) {
        at::mul_out(fd, f, x.drop_f.select(0, i));
      } else {
        fd.copy_(f);
      }
      at::baddbmm_out(xg_c, CI.select(1, i), fd, w.con_w_if);
      xg_c.add_(w.con_b_ih);
      at::baddbmm_out(hg_c, w.con_b_hh, h, w.con_w_hh);
      const Tensor h1 = s.Hs.select(1, i + 1);
      gru_forward(xg_c, hg_c, h, h1, s.con_rz.select(1, i), s.con_n.select(1, i),
                  s.con_hn.select(1, i), sp.clip);
      Tensor co = out.co.select(1, i);  // (R, B, 2U)
      at::baddbmm_out(co, w.co_b, h1, w.co_w);
      Tensor u = out.inputs.select(1, i);
      sample_into(u, co, U, sp.sample ? step_of(x.eps_co, i) : std::nullopt, sp.var_floor,
                  sp.logvar_max);
      if (x.keep_u.defined()) u.mul_(x.keep_u.select(0, i));
      s.Xs.select(1, i).narrow(-1, 0, U).copy_(u);
    }
    const Tensor gxi = seq ? x.gx.select(0, i) : x.gx;
    const Tensor xg = s.Xs.defined() ? at::baddbmm_out(xg_g, gxi, s.Xs.select(1, i), w.gen_w_iu)
                                     : gxi.expand({R, B, gxi.size(-1)});
    at::baddbmm_out(hg_g, w.gen_b_hh, g, w.gen_w_hh);
    const Tensor g1 = s.Gs.select(1, i + 1);
    gru_forward(xg, hg_g, g, g1, s.gen_rz.select(1, i), s.gen_n.select(1, i),
                s.gen_hn.select(1, i), sp.clip);
    Tensor gd = g1;
    if (x.drop_g.defined()) {
      gd = GD.select(1, i);
      at::mul_out(gd, g1, x.drop_g.select(0, i));
    }
    f = out.factors.select(1, i);
    f.copy_(at::bmm(gd, w.fac_w));
  }
  std::vector<Tensor> res;  // absent fields: a fresh empty tensor each (returns never alias)
  out.pack_into(res, o);
  s.pack_into(res, o);
  return handed_out(res);
}

// Gradients of Inputs then Weights, in field order (empty where absent or not
// differentiated), for the outputs' gradients g (mrlfads.recurrence.backward).
std::vector<Tensor> loop_backward(const Spec& sp, const Outputs& g, const Inputs& x,
                                  const Weights& w, const Outputs& out, const Saved& s) {
  at::NoGradGuard no_grad;
  const int64_t R = sp.R, P = sp.P, C = sp.C, U = sp.U, Tp = sp.T;
  const int64_t B = s.Gs.size(2), G = s.Gs.size(3), F = w.fac_w.size(2);
  const bool con = s.Hs.defined(), with_x = s.Xs.defined();
  const Tensor GD = s.GD.defined() ? s.GD : s.Gs.narrow(1, 1, Tp);
  const auto o = s.Gs.options();
  const Tensor none = at::zeros({0}, o);
  const Tensor DF = buffer({R, Tp, B, F}, o), DGX = buffer({R, Tp, B, 3 * G}, o),
               DGH = buffer({R, Tp, B, 3 * G}, o);
  const int64_t Cn = con ? s.Hs.size(3) : 0;
  const Tensor DCX = con ? buffer({R, Tp, B, 3 * Cn}, o) : none;
  const Tensor DCH = con ? buffer({R, Tp, B, 3 * Cn}, o) : none;
  const Tensor DCO = con ? buffer({R, Tp, B, 2 * U}, o) : none;
  const Tensor DMP = P ? buffer({P, Tp, B, 2 * C}, o) : none;
  const Tensor fac_t = w.fac_w.transpose(1, 2), ghh_t = w.gen_w_hh.transpose(1, 2);
  const Tensor giu_t = with_x ? w.gen_w_iu.transpose(1, 2) : none;
  const Tensor co_t = con ? w.co_w.transpose(1, 2) : none;
  const Tensor chh_t = con ? w.con_w_hh.transpose(1, 2) : none;
  const Tensor cif_t = con ? w.con_w_if.transpose(1, 2) : none;
  const Tensor msg_t = P ? w.msg_w.transpose(1, 2) : none;
  Tensor dg = at::zeros({R, B, G}, o), df = at::zeros({R, B, F}, o);
  Tensor dh = con ? at::zeros({R, B, Cn}, o) : none;
  for (int64_t i = Tp - 1; i >= 0; --i) {
    Tensor dfi = DF.select(1, i);
    if (g.factors.defined()) {
      at::add_out(dfi, df, g.factors.select(1, i));
    } else {
      dfi.copy_(df);
    }
    const Tensor dgd = at::bmm(dfi, fac_t);
    Tensor dprev = at::empty({R, B, G}, o);
    gru_backward(dg, dgd, step_of(x.drop_g, i), s.gen_rz.select(1, i), s.gen_n.select(1, i),
                 s.gen_hn.select(1, i), s.Gs.select(1, i), sp.clip, DGX.select(1, i),
                 DGH.select(1, i), dprev);
    dg = dprev.baddbmm_(DGH.select(1, i), ghh_t);
    const Tensor dx = with_x ? at::bmm(DGX.select(1, i), giu_t) : none;
    df = Tensor();
    if (con) {
      Tensor du = dx.narrow(-1, 0, U);
      if (g.inputs.defined()) du = du + g.inputs.select(1, i);
      if (x.keep_u.defined()) du = du * x.keep_u.select(0, i);
      const Tensor dco = DCO.select(1, i);
      posterior_grad(dco, du, out.co.select(1, i),
                     sp.sample ? step_of(x.eps_co, i) : std::nullopt, seq_step(g.co, i),
                     sp.var_floor, sp.logvar_max);
      const Tensor dhn = at::baddbmm(dh, dco, co_t);
      Tensor dhprev = at::empty({R, B, Cn}, o);
      gru_backward(dhn, std::nullopt, std::nullopt, s.con_rz.select(1, i), s.con_n.select(1, i),
                   s.con_hn.select(1, i), s.Hs.select(1, i), sp.clip, DCX.select(1, i),
                   DCH.select(1, i), dhprev);
      dh = dhprev.baddbmm_(DCH.select(1, i), chh_t);
      df = at::bmm(DCX.select(1, i), cif_t);
      if (x.drop_f.defined()) df.mul_(x.drop_f.select(0, i));
    }
    if (P) {
      // (R_dst, B, R-1, C) -> (R_dst, R-1, B, C) = (P, B, C)
      Tensor dm = dx.narrow(-1, U, (R - 1) * C).view({R, B, R - 1, C}).transpose(1, 2)
                      .reshape({P, B, C});
      if (g.messages.defined()) dm = dm + g.messages.select(1, i);
      const bool keep = x.keep.defined();
      if (keep) dm = dm * x.keep.select(0, i);
      const Tensor dmp = DMP.select(1, i);
      // the params' own gradient reaches them directly; with silencing its mean part is
      // masked first
      const bool gmp = g.msg_params.defined();
      posterior_grad(dmp, dm, out.msg_params.select(1, i),
                     sp.sample ? step_of(x.eps_msg, i) : std::nullopt,
                     gmp && !keep ? seq_step(g.msg_params, i) : std::nullopt, sp.var_floor,
                     sp.logvar_max);
      if (gmp && keep) {
        const Tensor gi = g.msg_params.select(1, i);
        dmp.narrow(-1, 0, C).addcmul_(gi.narrow(-1, 0, C), x.keep.select(0, i));
        dmp.narrow(-1, C, C).add_(gi.narrow(-1, C, C));
      }
      if (!sp.detach_src) {  // else the message trains its map only, not its source
        const Tensor dsrc = at::zeros({R, B, w.msg_w.size(1)}, o);
        dsrc.index_add_(0, x.src_index, at::bmm(dmp, msg_t));
        if (sp.src_is_g) {
          dg = dg + dsrc;
        } else {
          df = df.defined() ? df + dsrc : dsrc;
        }
      }
    }
    if (!df.defined()) df = at::zeros({R, B, F}, o);
  }
  Inputs dx_in;
  dx_in.g0 = dg;
  dx_in.f0 = df;
  dx_in.gx = x.gx.dim() == 4 ? DGX.transpose(0, 1) : bgrad(DGX);
  Weights dw;
  dw.fac_w = wgrad(GD, DF);
  dw.gen_w_hh = wgrad(s.Gs.narrow(1, 0, Tp), DGH);
  dw.gen_b_hh = bgrad(DGH);
  if (with_x) dw.gen_w_iu = wgrad(s.Xs, DGX);
  if (con) {
    const int64_t E = x.ce.size(3);
    // the ci encoder's share, d(ce) and d(W_ie): one GEMM each over all T'*B rows
    dx_in.ce = at::bmm(DCX.view({R, Tp * B, 3 * Cn}), w.con_w_ie.transpose(1, 2))
                   .view({R, Tp, B, E});
    dw.con_w_ie = wgrad(x.ce, DCX);
    dw.con_b_ih = bgrad(DCX);
    dw.con_w_if = wgrad(s.FD, DCX);
    dw.con_w_hh = wgrad(s.Hs.narrow(1, 0, Tp), DCH);
    dw.con_b_hh = bgrad(DCH);
    dw.co_w = wgrad(s.Hs.narrow(1, 1, Tp), DCO);
    dw.co_b = bgrad(DCO);
  }
  if (P) {
    dw.msg_w = wgrad(s.ST, DMP);
    dw.msg_b = bgrad(DMP);
  }
  std::vector<Tensor> res;
  dx_in.pack_into(res, o);
  dw.pack_into(res, o);
  return res;
}

Spec make_spec(int64_t R, int64_t P, int64_t C, int64_t U, int64_t T, double clip, bool src_is_g,
               bool sample, bool detach_src, double var_floor, double logvar_max) {
  return Spec{R, P, C, U, T, clip, src_is_g, sample, detach_src, var_floor, logvar_max};
}

std::vector<Tensor> recurrence_forward(at::TensorList inputs, at::TensorList weights, int64_t R,
                                       int64_t P, int64_t C, int64_t U, int64_t T, double clip,
                                       bool src_is_g, bool sample, bool detach_src,
                                       double var_floor, double logvar_max) {
  return loop_forward(make_spec(R, P, C, U, T, clip, src_is_g, sample, detach_src, var_floor,
                                logvar_max),
                      Inputs::unpack(inputs), Weights::unpack(weights));
}

std::vector<Tensor> recurrence_backward(at::TensorList grads, at::TensorList inputs,
                                        at::TensorList weights, at::TensorList outputs,
                                        at::TensorList saved, int64_t R, int64_t P, int64_t C,
                                        int64_t U, int64_t T, double clip, bool src_is_g,
                                        bool sample, bool detach_src, double var_floor,
                                        double logvar_max) {
  return loop_backward(make_spec(R, P, C, U, T, clip, src_is_g, sample, detach_src, var_floor,
                                 logvar_max),
                       Outputs::unpack(grads), Inputs::unpack(inputs), Weights::unpack(weights),
                       Outputs::unpack(outputs), Saved::unpack(saved));
}

// ---------------------------------------------------------------- plain GRU over a sequence
// xg (T, R, B, 3H) input gates, h_0 = 0; returns GruSaved (the states h_1..h_T first).
std::vector<Tensor> gru_sequence_forward(const Tensor& xg, const Tensor& w_hh,
                                         const Tensor& b_hh) {
  at::NoGradGuard no_grad;
  const int64_t T = xg.size(0), R = xg.size(1), B = xg.size(2), H = w_hh.size(1);
  const auto o = xg.options();
  GruSaved s;
  s.states = buffer({R, T, B, H}, o);
  s.rz = buffer({R, T, B, 2 * H}, o);
  s.n = buffer({R, T, B, H}, o);
  s.hn = buffer({R, T, B, H}, o);
  Tensor hg = buffer({R, B, 3 * H}, o);
  const Tensor zero = at::zeros({R, B, H}, o);
  for (int64_t i = 0; i < T; ++i) {
    const Tensor h = i ? s.states.select(1, i - 1) : zero;
    at::baddbmm_out(hg, b_hh, h, w_hh);
    gru_forward(xg.select(0, i), hg, h, s.states.select(1, i), s.rz.select(1, i),
                s.n.select(1, i), s.hn.select(1, i), -1.0);
  }
  std::vector<Tensor> res;
  s.pack_into(res, o);
  return handed_out(res);
}

// Gradients (d xg (T, R, B, 3H), d w_hh, d b_hh) for the states' gradient gH (R, T, B, H).
std::vector<Tensor> gru_sequence_backward(const Tensor& gH, const Tensor& w_hh,
                                          at::TensorList saved) {
  at::NoGradGuard no_grad;
  const GruSaved s = GruSaved::unpack(saved);
  const int64_t R = gH.size(0), T = gH.size(1), B = gH.size(2), H = gH.size(3);
  const auto o = gH.options();
  const Tensor w_t = w_hh.transpose(1, 2);
  const Tensor DX = buffer({R, T, B, 3 * H}, o), DH = buffer({R, T, B, 3 * H}, o);
  const Tensor zero = at::zeros({R, B, H}, o);
  Tensor dh = zero;
  for (int64_t i = T - 1; i >= 0; --i) {
    Tensor dprev = at::empty({R, B, H}, o);
    gru_backward(dh, gH.select(1, i), std::nullopt, s.rz.select(1, i), s.n.select(1, i),
                 s.hn.select(1, i), i ? s.states.select(1, i - 1) : zero, -1.0,
                 DX.select(1, i), DH.select(1, i), dprev);
    dh = dprev.baddbmm_(DH.select(1, i), w_t);
  }
  // h_0 = 0 adds nothing to W_hh's gradient: states h_1..h_{T-1} meet steps 2..T
  return {DX.transpose(0, 1), wgrad(s.states.narrow(1, 0, T - 1), DH.narrow(1, 1, T - 1)),
          bgrad(DH)};
}

}  // namespace

TORCH_LIBRARY(mrlfads_native, m) {
  // the structures travel as Tensor[] in mrlfads.loop_io's field order (loop_fields)
  m.def(
      "recurrence_forward(Tensor[] inputs, Tensor[] weights, int R, int P, int C, int U, int T, "
      "float clip, bool src_is_g, bool sample, bool detach_src, float var_floor, "
      "float logvar_max) -> Tensor[]");
  m.def(
      "recurrence_backward(Tensor[] grads, Tensor[] inputs, Tensor[] weights, Tensor[] outputs, "
      "Tensor[] saved, int R, int P, int C, int U, int T, float clip, bool src_is_g, "
      "bool sample, bool detach_src, float var_floor, float logvar_max) -> Tensor[]");
  m.def("gru_sequence_forward(Tensor xg, Tensor w_hh, Tensor b_hh) -> Tensor[]");
  m.def("gru_sequence_backward(Tensor gH, Tensor w_hh, Tensor[] saved) -> Tensor[]");
  m.def("set_poison(bool on) -> ()", &set_poison);  // backend-free: plain functions
  m.def("loop_fields(str which) -> str", &loop_fields);
}

TORCH_LIBRARY_IMPL(mrlfads_native, CPU, m) {
  m.impl("recurrence_forward", &recurrence_forward);
  m.impl("recurrence_backward", &recurrence_backward);
  m.impl("gru_sequence_forward", &gru_sequence_forward);
  m.impl("gru_sequence_backward", &gru_sequence_backward);
}
