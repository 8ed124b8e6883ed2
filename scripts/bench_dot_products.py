#!/usr/bin/env python
"""Peak rate of the dot-product instructions this CPU offers for scoring (a microbenchmark).

    python scripts/bench_dot_products.py

Scoring at d=50 is one long dot-product loop over the catalogue. On x86 the candidates are:
``vfmadd231ps`` (float32 FMA, 8 multiply-adds per 256-bit instruction), ``vpmaddwd`` +
``vpaddd`` (int16 x int16 pairs summed into int32, 16 per instruction: exact for uint8 - z times
int8, what the fused ``Score`` kernel uses), ``vpmaddubsw`` + ``vpaddw`` (u8 x s8 pairs into
saturating int16, 32 per instruction: exact only while |w| <= 64), and with AVX-512 VNNI / AVX-VNNI
``vpdpbusd`` (u8 x s8 into int32, no saturation). Each is timed with 10 independent register
accumulators (no memory traffic), so the figure is the core's peak issue rate: the bound an
INT8 scoring kernel cannot pass. Compiles a small C++ program with ``g++ -O2 -march=native``
(``$CXX``); prints one line per instruction and the CPU flags.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from export.latency import machine_info
from qat.cli import ArgumentParser, run_cli

SOURCE = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#define R10(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
template <typename F> double seconds(F f) {
  auto t0 = std::chrono::steady_clock::now(); f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
int main() {
  const long iters = 100000000; const double ops = iters * 10.0;
  __m256i w = _mm256_set1_epi16(3), x = _mm256_set1_epi16(5);
  __m256 fw = _mm256_set1_ps(1.0001f), fx = _mm256_set1_ps(0.9999f);
#define DECL(i) __m256i a##i = _mm256_set1_epi32(i); __m256 f##i = _mm256_set1_ps(i); \
  __m256i b##i = _mm256_set1_epi16(i);
  R10(DECL)
  double d1 = seconds([&] { for (long n = 0; n < iters; ++n) {
#define MADD(i) a##i = _mm256_add_epi32(a##i, _mm256_madd_epi16(w, x));
    R10(MADD) asm volatile("" : "+x"(w), "+x"(x)); } });
  double d2 = seconds([&] { for (long n = 0; n < iters; ++n) {
#define FMA(i) f##i = _mm256_fmadd_ps(fw, fx, f##i);
    R10(FMA) asm volatile("" : "+x"(fw), "+x"(fx)); } });
  double d3 = seconds([&] { for (long n = 0; n < iters; ++n) {
#define UBS(i) b##i = _mm256_add_epi16(b##i, _mm256_maddubs_epi16(w, x));
    R10(UBS) asm volatile("" : "+x"(w), "+x"(x)); } });
  printf("vfmadd231ps           float32, exact-as-float      %6.1f G MAC/s\n", 8 * ops / d2 / 1e9);
  printf("vpmaddwd + vpaddd     int16 pairs -> int32, exact  %6.1f G MAC/s\n", 16 * ops / d1 / 1e9);
  printf("vpmaddubsw + vpaddw   u8 x s8 -> int16, saturates  %6.1f G MAC/s\n", 32 * ops / d3 / 1e9);
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
          c7 = c0, c8 = c0, c9 = c0;
  double d4 = seconds([&] { for (long n = 0; n < iters; ++n) {
#if defined(__AVXVNNI__)
#define DP(i) c##i = _mm256_dpbusd_avx_epi32(c##i, w, x);
#else
#define DP(i) c##i = _mm256_dpbusd_epi32(c##i, w, x);
#endif
    R10(DP) asm volatile("" : "+x"(w), "+x"(x)); } });
  printf("vpdpbusd (VNNI)       u8 x s8 -> int32, exact      %6.1f G MAC/s\n", 32 * ops / d4 / 1e9);
  int t = _mm256_extract_epi32(c0, 0) + _mm256_extract_epi32(c9, 0);
#else
  int t = 0;
  printf("vpdpbusd (VNNI)       not available on this CPU\n");
#endif
  int s = t;
#define SUM(i) s += _mm256_extract_epi32(a##i, 0) + (int)_mm256_cvtss_f32(f##i) + \
  _mm256_extract_epi16(b##i, 0);
  R10(SUM)
  return s == 42 ? 3 : 0;
}
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 done, 2 bad input or no working compiler (one ``error:`` line)."""
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    ArgumentParser(description=__doc__.split("\n\n")[0],
                   epilog="No options: it compiles with $CXX (default g++).").parse_args(argv)
    compiler = os.environ.get("CXX", "g++")
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "rate.cc", Path(tmp) / "rate"
        source.write_text(SOURCE)
        try:
            built = subprocess.run([compiler, "-O2", "-march=native", str(source), "-o",
                                    str(binary)], capture_output=True, text=True)
        except OSError as err:
            raise ValueError(f"cannot run the C++ compiler {compiler!r} ({err.strerror or err}); "
                             "install g++ or set $CXX") from err
        if built.returncode != 0:
            first = (built.stderr.strip().splitlines() or ["no message"])[0]
            raise ValueError(f"{compiler} failed: {first}")
        info = machine_info()
        print(f"{info['cpu']}; flags {info['flags']}")
        done = subprocess.run([str(binary)], capture_output=True, text=True)
        print(done.stdout, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
