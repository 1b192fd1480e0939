// The MR-LFADS time loop (forward and hand-written backprop through time) in C++.
//
// Same steps, buffers and layouts as the Python loop in mrlfads/recurrence.py, which stays
// the reference (tests compare the two, and both against mrlfads/oracle.py). Why it exists:
// on a CPU the Python loop spends most of a training step dispatching ~100 small ops per
// time bin. Here matmuls still go to ATen (MKL), but the interpreter is gone and each GRU
// step's elementwise math (gates, clip, and their derivatives) is one fused pass over rows.
//
// Layout conventions (as in recurrence.py): per-step tensors are (R, B, width) and
// per-pair (P, B, width); saved sequences are region-major (R, T', B, width). Absent
// inputs are None; absent outputs are empty tensors (Python maps them back to None).
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

Tensor step(const OptT& t, int64_t i) { return t->select(0, i); }

// sum over time and batch of x^T dy: (R, T', B, I), (R, T', B, O) -> (R, I, O)
Tensor wgrad(const Tensor& x, const Tensor& dy) {
  const int64_t R = x.size(0);
  return at::bmm(x.reshape({R, -1, x.size(3)}).transpose(1, 2), dy.reshape({R, -1, dy.size(3)}));
}

// (R, T', B, O) -> (R, 1, O): one reduction over the T'*B rows
Tensor bgrad(const Tensor& dy) { return dy.reshape({dy.size(0), -1, dy.size(3)}).sum(1, true); }

bool has(const Tensor& t) { return t.defined() && t.numel() > 0; }

// ---------------------------------------------------------------- the MR-LFADS loop
std::vector<Tensor> recurrence_forward(
    int64_t R, int64_t P, int64_t C, int64_t U, double clip, bool src_is_g, bool sample,
    double var_floor, double logvar_max, int64_t Tp, const Tensor& g0, const Tensor& f0,
    const OptT& ce,
    const OptT& con_w_ie, const OptT& con_b_ih, const Tensor& gx, const OptT& msg_w,
    const OptT& msg_b, const OptT& con_w_if, const OptT& con_w_hh, const OptT& con_b_hh,
    const OptT& co_w, const OptT& co_b,
    const OptT& gen_w_iu, const Tensor& gen_w_hh, const Tensor& gen_b_hh, const Tensor& fac_w,
    const OptT& eps_msg, const OptT& eps_co, const OptT& keep, const OptT& drop_f,
    const OptT& drop_g, const OptT& src_index) {
  at::NoGradGuard no_grad;
  const int64_t B = g0.size(1), G = g0.size(2), F = fac_w.size(2);
  const bool con = ce.has_value(), seq = gx.dim() == 4;
  const auto o = g0.options();
  const Tensor none = at::zeros({0}, o);
  Tensor Gs = buffer({R, Tp + 1, B, G}, o);
  Gs.select(1, 0).copy_(g0);
  Tensor Fs = at::empty({R, Tp, B, F}, o);
  Tensor GD = drop_g ? buffer({R, Tp, B, G}, o) : Gs.narrow(1, 1, Tp);
  Tensor Xs = gen_w_iu ? buffer({R, Tp, B, gen_w_iu->size(1)}, o) : none;
  const int64_t Cn = con ? con_w_hh->size(1) : 0;
  Tensor Hs = con ? buffer({R, Tp + 1, B, Cn}, o) : none;
  if (con) Hs.select(1, 0).zero_();
  Tensor FD = con ? buffer({R, Tp, B, F}, o) : none;
  Tensor CO = con ? at::empty({R, Tp, B, 2 * U}, o) : none;
  Tensor Us = con ? at::empty({R, Tp, B, U}, o) : none;
  Tensor ST = P ? buffer({P, Tp, B, msg_w->size(1)}, o) : none;
  Tensor MP = P ? at::empty({P, Tp, B, 2 * C}, o) : none;
  Tensor M = P ? at::empty({P, Tp, B, C}, o) : none;
  Tensor GRZ = buffer({R, Tp, B, 2 * G}, o), GN = buffer({R, Tp, B, G}, o),
         GHN = buffer({R, Tp, B, G}, o);
  Tensor CRZ = con ? buffer({R, Tp, B, 2 * Cn}, o) : none;
  Tensor CN = con ? buffer({R, Tp, B, Cn}, o) : none;
  Tensor CHN = con ? buffer({R, Tp, B, Cn}, o) : none;
  // per-step gate pre-activations, written in place (fresh 100s-of-kB blocks every step
  // went back and forth to the OS)
  Tensor hg_g = buffer({R, B, 3 * G}, o), xg_g = buffer({R, B, 3 * G}, o);
  Tensor hg_c = con ? buffer({R, B, 3 * Cn}, o) : none;
  Tensor xg_c = con ? buffer({R, B, 3 * Cn}, o) : none;
  // the controller's input gates from the ci encoder, for the whole sequence in one GEMM,
  // into a recycled buffer; the bias is added per step (copying it into this 56 MB block,
  // fresh each step, cost ~4% of a batch-64 step)
  Tensor CI = con ? buffer({R, Tp, B, 3 * Cn}, o) : none;
  if (con) {
    Tensor ci_flat = CI.view({R, Tp * B, 3 * Cn});
    at::bmm_out(ci_flat, ce->reshape({R, Tp * B, ce->size(3)}), *con_w_ie);
  }
  Tensor f = f0;
  for (int64_t i = 0; i < Tp; ++i) {
    const Tensor g = Gs.select(1, i);
    if (P) {
      const Tensor st = ST.select(1, i);
      st.copy_((src_is_g ? g : f).index_select(0, *src_index));
      Tensor m = M.select(1, i), mpi = MP.select(1, i);
      // (P, B, 2C); straight into MP unless silencing rewrites the means kept there
      const Tensor mp = keep ? at::baddbmm(*msg_b, st, *msg_w)
                             : at::baddbmm_out(mpi, *msg_b, st, *msg_w);
      sample_into(m, mp, C, sample ? std::optional(step(eps_msg, i)) : std::nullopt, var_floor,
                     logvar_max);
      if (keep) {
        const Tensor k = step(keep, i);
        m.mul_(k);
        Tensor kept_mean = mpi.narrow(-1, 0, C);
        at::mul_out(kept_mean, mp.narrow(-1, 0, C), k);
        mpi.narrow(-1, C, C).copy_(mp.narrow(-1, C, C));
      }
      // (P, B, C) -> (R_dst, R-1, B, C) -> (R_dst, B, R-1, C) into x's message slots
      Xs.select(1, i).narrow(-1, U, (R - 1) * C).view({R, B, R - 1, C})
          .copy_(m.view({R, R - 1, B, C}).transpose(1, 2));
    }
    if (con) {
      const Tensor h = Hs.select(1, i);
      Tensor fd = FD.select(1, i);
      if (drop_f) {
        at::mul_out(fd, f, step(drop_f, i));
      } else {
        fd.copy_(f);
      }
      at::baddbmm_out(xg_c, CI.select(1, i), fd, *con_w_if);
      xg_c.add_(*con_b_ih);
      at::baddbmm_out(hg_c, *con_b_hh, h, *con_w_hh);
      const Tensor h1 = Hs.select(1, i + 1);
      gru_forward(xg_c, hg_c, h, h1, CRZ.select(1, i), CN.select(1, i), CHN.select(1, i), clip);
      Tensor co = CO.select(1, i);  // (R, B, 2U)
      at::baddbmm_out(co, *co_b, h1, *co_w);
      Tensor u = Us.select(1, i);
      sample_into(u, co, U, sample ? std::optional(step(eps_co, i)) : std::nullopt, var_floor,
                     logvar_max);
      Xs.select(1, i).narrow(-1, 0, U).copy_(u);
    }
    const Tensor gxi = seq ? gx.select(0, i) : gx;
    const Tensor xg = gen_w_iu ? at::baddbmm_out(xg_g, gxi, Xs.select(1, i), *gen_w_iu)
                               : gxi.expand({R, B, gxi.size(-1)});
    at::baddbmm_out(hg_g, gen_b_hh, g, gen_w_hh);
    const Tensor g1 = Gs.select(1, i + 1);
    gru_forward(xg, hg_g, g, g1, GRZ.select(1, i), GN.select(1, i), GHN.select(1, i), clip);
    Tensor gd = g1;
    if (drop_g) {
      gd = GD.select(1, i);
      at::mul_out(gd, g1, step(drop_g, i));
    }
    f = Fs.select(1, i);
    f.copy_(at::bmm(gd, fac_w));
  }
  return handed_out({Fs, CO, Us, MP, M, Gs, GD, Xs, Hs, FD, ST, GRZ, GN, GHN, CRZ, CN, CHN});
}

std::vector<Tensor> recurrence_backward(
    int64_t R, int64_t P, int64_t C, int64_t U, double clip, bool src_is_g, bool sample,
    double var_floor, double logvar_max, bool gx_seq, const OptT& gF, const OptT& gCO,
    const OptT& gU,
    const OptT& gMP, const OptT& gM, const OptT& src_index, const OptT& msg_w, const OptT& ce,
    const OptT& con_w_ie, const OptT& con_w_if, const OptT& con_w_hh, const OptT& co_w,
    const OptT& gen_w_iu, const Tensor& gen_w_hh, const Tensor& fac_w, const OptT& eps_msg,
    const OptT& eps_co,
    const OptT& keep, const OptT& drop_f, const OptT& drop_g, const Tensor& CO,
    const Tensor& MP, const Tensor& Gs, const Tensor& GD, const Tensor& Xs, const Tensor& Hs,
    const Tensor& FD, const Tensor& ST, const Tensor& GRZ, const Tensor& GN, const Tensor& GHN,
    const Tensor& CRZ, const Tensor& CN, const Tensor& CHN) {
  at::NoGradGuard no_grad;
  const int64_t Tp = GRZ.size(1), B = Gs.size(2), G = Gs.size(3), F = fac_w.size(2);
  const bool con = has(Hs), with_x = has(Xs);
  const auto o = Gs.options();
  const Tensor none = at::zeros({0}, o);
  const Tensor DF = buffer({R, Tp, B, F}, o), DGX = buffer({R, Tp, B, 3 * G}, o),
               DGH = buffer({R, Tp, B, 3 * G}, o);
  const int64_t Cn = con ? Hs.size(3) : 0;
  const Tensor DCX = con ? buffer({R, Tp, B, 3 * Cn}, o) : none;
  const Tensor DCH = con ? buffer({R, Tp, B, 3 * Cn}, o) : none;
  const Tensor DCO = con ? buffer({R, Tp, B, 2 * U}, o) : none;
  const Tensor DMP = P ? buffer({P, Tp, B, 2 * C}, o) : none;
  const Tensor fac_t = fac_w.transpose(1, 2), ghh_t = gen_w_hh.transpose(1, 2);
  const Tensor giu_t = with_x ? gen_w_iu->transpose(1, 2) : none;
  const Tensor co_t = con ? co_w->transpose(1, 2) : none;
  const Tensor chh_t = con ? con_w_hh->transpose(1, 2) : none;
  const Tensor cif_t = con ? con_w_if->transpose(1, 2) : none;
  const Tensor msg_t = P ? msg_w->transpose(1, 2) : none;
  Tensor dg = at::zeros({R, B, G}, o), df = at::zeros({R, B, F}, o);
  Tensor dh = con ? at::zeros({R, B, Cn}, o) : none;
  for (int64_t i = Tp - 1; i >= 0; --i) {
    Tensor dfi = DF.select(1, i);
    if (gF) {
      at::add_out(dfi, df, gF->select(1, i));
    } else {
      dfi.copy_(df);
    }
    const Tensor dgd = at::bmm(dfi, fac_t);
    Tensor dprev = at::empty({R, B, G}, o);
    gru_backward(dg, dgd, drop_g ? std::optional(step(drop_g, i)) : std::nullopt,
                 GRZ.select(1, i), GN.select(1, i), GHN.select(1, i), Gs.select(1, i), clip,
                 DGX.select(1, i), DGH.select(1, i), dprev);
    dg = dprev.baddbmm_(DGH.select(1, i), ghh_t);
    const Tensor dx = with_x ? at::bmm(DGX.select(1, i), giu_t) : none;
    df = Tensor();
    if (con) {
      Tensor du = dx.narrow(-1, 0, U);
      if (gU) du = du + gU->select(1, i);
      const Tensor dco = DCO.select(1, i);
      posterior_grad(dco, du, CO.select(1, i),
                     sample ? std::optional(step(eps_co, i)) : std::nullopt,
                     gCO ? std::optional(gCO->select(1, i)) : std::nullopt, var_floor,
                     logvar_max);
      const Tensor dhn = at::baddbmm(dh, dco, co_t);
      Tensor dhprev = at::empty({R, B, Cn}, o);
      gru_backward(dhn, std::nullopt, std::nullopt, CRZ.select(1, i), CN.select(1, i),
                   CHN.select(1, i), Hs.select(1, i), clip, DCX.select(1, i),
                   DCH.select(1, i), dhprev);
      dh = dhprev.baddbmm_(DCH.select(1, i), chh_t);
      df = at::bmm(DCX.select(1, i), cif_t);
      if (drop_f) df.mul_(step(drop_f, i));
    }
    if (P) {
      // (R_dst, B, R-1, C) -> (R_dst, R-1, B, C) = (P, B, C)
      Tensor dm = dx.narrow(-1, U, (R - 1) * C).view({R, B, R - 1, C}).transpose(1, 2)
                      .reshape({P, B, C});
      if (gM) dm = dm + gM->select(1, i);
      if (keep) dm = dm * step(keep, i);
      const Tensor dmp = DMP.select(1, i);
      // gMP reaches the params directly; with silencing its mean part is masked first
      const bool add_gmp = gMP && !keep;
      posterior_grad(dmp, dm, MP.select(1, i),
                     sample ? std::optional(step(eps_msg, i)) : std::nullopt,
                     add_gmp ? std::optional(gMP->select(1, i)) : std::nullopt, var_floor,
                     logvar_max);
      if (gMP && keep) {
        const Tensor gmp = gMP->select(1, i);
        dmp.narrow(-1, 0, C).addcmul_(gmp.narrow(-1, 0, C), step(keep, i));
        dmp.narrow(-1, C, C).add_(gmp.narrow(-1, C, C));
      }
      const Tensor dsrc = at::zeros({R, B, msg_w->size(1)}, o);
      dsrc.index_add_(0, *src_index, at::bmm(dmp, msg_t));
      if (src_is_g) {
        dg = dg + dsrc;
      } else {
        df = df.defined() ? df + dsrc : dsrc;
      }
    }
    if (!df.defined()) df = at::zeros({R, B, F}, o);
  }
  // dg, df, ce, con_w_ie, con_b_ih, gx, msg_w, msg_b, con_w_if, con_w_hh, con_b_hh, co_w,
  // co_b, gen_w_iu, gen_w_hh, gen_b_hh, fac_w
  std::vector<Tensor> out = {dg, df, none, none, none,
                             gx_seq ? DGX.transpose(0, 1) : bgrad(DGX),
                             none, none, none, none, none, none, none,
                             with_x ? wgrad(Xs, DGX) : none,
                             wgrad(Gs.narrow(1, 0, Tp), DGH), bgrad(DGH), wgrad(GD, DF)};
  if (con) {
    const int64_t E = ce->size(3);
    // the ci encoder's share, d(ce) and d(W_ie): one GEMM each over all T'*B rows
    out[2] = at::bmm(DCX.view({R, Tp * B, 3 * Cn}), con_w_ie->transpose(1, 2))
                 .view({R, Tp, B, E});
    out[3] = wgrad(*ce, DCX);
    out[4] = bgrad(DCX);
    out[8] = wgrad(FD, DCX);
    out[9] = wgrad(Hs.narrow(1, 0, Tp), DCH);
    out[10] = bgrad(DCH);
    out[11] = wgrad(Hs.narrow(1, 1, Tp), DCO);
    out[12] = bgrad(DCO);
  }
  if (P) {
    out[6] = wgrad(ST, DMP);
    out[7] = bgrad(DMP);
  }
  return out;
}

// ---------------------------------------------------------------- plain GRU over a sequence
// xg (T, R, B, 3H) input gates; returns the states Hs (R, T+1, B, H) and the caches.
std::vector<Tensor> gru_sequence_forward(const Tensor& xg, const Tensor& w_hh,
                                         const Tensor& b_hh) {
  at::NoGradGuard no_grad;
  const int64_t T = xg.size(0), R = xg.size(1), B = xg.size(2), H = w_hh.size(1);
  const auto o = xg.options();
  Tensor Hs = buffer({R, T + 1, B, H}, o);
  Hs.select(1, 0).zero_();
  Tensor RZ = buffer({R, T, B, 2 * H}, o), N = buffer({R, T, B, H}, o),
         HN = buffer({R, T, B, H}, o);
  Tensor hg = buffer({R, B, 3 * H}, o);
  for (int64_t i = 0; i < T; ++i) {
    const Tensor h = Hs.select(1, i);
    at::baddbmm_out(hg, b_hh, h, w_hh);
    gru_forward(xg.select(0, i), hg, h, Hs.select(1, i + 1), RZ.select(1, i), N.select(1, i),
                HN.select(1, i), -1.0);
  }
  return handed_out({Hs, RZ, N, HN});
}

// Gradients (d xg (T, R, B, 3H), d w_hh, d b_hh) for the states' gradient gH (R, T, B, H).
std::vector<Tensor> gru_sequence_backward(const Tensor& gH, const Tensor& w_hh,
                                          const Tensor& Hs, const Tensor& RZ, const Tensor& N,
                                          const Tensor& HN) {
  at::NoGradGuard no_grad;
  const int64_t R = gH.size(0), T = gH.size(1), B = gH.size(2), H = gH.size(3);
  const auto o = Hs.options();
  const Tensor w_t = w_hh.transpose(1, 2);
  const Tensor DX = buffer({R, T, B, 3 * H}, o), DH = buffer({R, T, B, 3 * H}, o);
  Tensor dh = at::zeros({R, B, H}, o);
  for (int64_t i = T - 1; i >= 0; --i) {
    Tensor dprev = at::empty({R, B, H}, o);
    gru_backward(dh, gH.select(1, i), std::nullopt, RZ.select(1, i), N.select(1, i),
                 HN.select(1, i), Hs.select(1, i), -1.0, DX.select(1, i), DH.select(1, i),
                 dprev);
    dh = dprev.baddbmm_(DH.select(1, i), w_t);
  }
  return {DX.transpose(0, 1), wgrad(Hs.narrow(1, 0, T), DH), bgrad(DH)};
}

}  // namespace

TORCH_LIBRARY(mrlfads_native, m) {
  m.def(
      "recurrence_forward(int R, int P, int C, int U, float clip, bool src_is_g, bool sample, "
      "float var_floor, float logvar_max, int Tp, Tensor g, Tensor f, Tensor? ce, "
      "Tensor? con_w_ie, "
      "Tensor? con_b_ih, Tensor gx, Tensor? msg_w, "
      "Tensor? msg_b, Tensor? con_w_if, Tensor? con_w_hh, Tensor? con_b_hh, Tensor? co_w, "
      "Tensor? co_b, Tensor? gen_w_iu, Tensor gen_w_hh, Tensor gen_b_hh, Tensor fac_w, "
      "Tensor? eps_msg, Tensor? eps_co, Tensor? keep, Tensor? drop_f, Tensor? drop_g, "
      "Tensor? src_index) -> Tensor[]");
  m.def(
      "recurrence_backward(int R, int P, int C, int U, float clip, bool src_is_g, bool sample, "
      "float var_floor, float logvar_max, bool gx_seq, Tensor? gF, Tensor? gCO, Tensor? gU, "
      "Tensor? gMP, "
      "Tensor? gM, Tensor? src_index, Tensor? msg_w, Tensor? ce, Tensor? con_w_ie, "
      "Tensor? con_w_if, Tensor? con_w_hh, "
      "Tensor? co_w, Tensor? gen_w_iu, Tensor gen_w_hh, Tensor fac_w, Tensor? eps_msg, "
      "Tensor? eps_co, Tensor? keep, Tensor? drop_f, Tensor? drop_g, Tensor CO, Tensor MP, "
      "Tensor Gs, Tensor GD, Tensor Xs, Tensor Hs, Tensor FD, Tensor ST, Tensor GRZ, "
      "Tensor GN, Tensor GHN, Tensor CRZ, Tensor CN, Tensor CHN) -> Tensor[]");
  m.def("gru_sequence_forward(Tensor xg, Tensor w_hh, Tensor b_hh) -> Tensor[]");
  m.def("set_poison(bool on) -> ()", &set_poison);  // backend-free: a plain function
  m.def(
      "gru_sequence_backward(Tensor gH, Tensor w_hh, Tensor Hs, Tensor RZ, Tensor N, "
      "Tensor HN) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(mrlfads_native, CPU, m) {
  m.impl("recurrence_forward", &recurrence_forward);
  m.impl("recurrence_backward", &recurrence_backward);
  m.impl("gru_sequence_forward", &gru_sequence_forward);
  m.impl("gru_sequence_backward", &gru_sequence_backward);
}
