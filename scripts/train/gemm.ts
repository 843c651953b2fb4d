// The one matrix kernel the training uses: C[M,N] = A[M,K] * B[N,K]^T, all
// row-major Float32Arrays. Both operands are walked along contiguous rows (a
// dot product per output), and the main loop computes a 4x4 block of C at a
// time so each loaded element is used four times. Sums are kept in doubles
// (JS numbers) and rounded to float32 once, when stored.
//
// Forward:  Z[B,out]   = X[B,in]      * W[out,in]^T
// Backward: dW[out,in] = dZ^T[out,B]  * X^T[in,B]^T
//           dX[B,in]   = dZ[B,out]    * W^T[in,out]^T

export function gemmABt(
  A: Float32Array, B: Float32Array, C: Float32Array,
  M: number, N: number, K: number,
): void {
  const M4 = M - (M % 4);
  const N4 = N - (N % 4);
  for (let m = 0; m < M4; m += 4) {
    const a0 = m * K, a1 = a0 + K, a2 = a1 + K, a3 = a2 + K;
    for (let n = 0; n < N4; n += 4) {
      const b0 = n * K, b1 = b0 + K, b2 = b1 + K, b3 = b2 + K;
      let s00 = 0, s01 = 0, s02 = 0, s03 = 0;
      let s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      let s20 = 0, s21 = 0, s22 = 0, s23 = 0;
      let s30 = 0, s31 = 0, s32 = 0, s33 = 0;
      for (let k = 0; k < K; k++) {
        const x0 = A[a0 + k]!, x1 = A[a1 + k]!, x2 = A[a2 + k]!, x3 = A[a3 + k]!;
        const w0 = B[b0 + k]!, w1 = B[b1 + k]!, w2 = B[b2 + k]!, w3 = B[b3 + k]!;
        s00 += x0 * w0; s01 += x0 * w1; s02 += x0 * w2; s03 += x0 * w3;
        s10 += x1 * w0; s11 += x1 * w1; s12 += x1 * w2; s13 += x1 * w3;
        s20 += x2 * w0; s21 += x2 * w1; s22 += x2 * w2; s23 += x2 * w3;
        s30 += x3 * w0; s31 += x3 * w1; s32 += x3 * w2; s33 += x3 * w3;
      }
      let c = m * N + n;
      C[c] = s00; C[c + 1] = s01; C[c + 2] = s02; C[c + 3] = s03; c += N;
      C[c] = s10; C[c + 1] = s11; C[c + 2] = s12; C[c + 3] = s13; c += N;
      C[c] = s20; C[c + 1] = s21; C[c + 2] = s22; C[c + 3] = s23; c += N;
      C[c] = s30; C[c + 1] = s31; C[c + 2] = s32; C[c + 3] = s33;
    }
    // Leftover columns for this block of rows.
    for (let n = N4; n < N; n++) {
      const b0 = n * K;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let k = 0; k < K; k++) {
        const w = B[b0 + k]!;
        s0 += A[a0 + k]! * w; s1 += A[a1 + k]! * w; s2 += A[a2 + k]! * w; s3 += A[a3 + k]! * w;
      }
      C[m * N + n] = s0; C[(m + 1) * N + n] = s1; C[(m + 2) * N + n] = s2; C[(m + 3) * N + n] = s3;
    }
  }
  // Leftover rows.
  for (let m = M4; m < M; m++) {
    const a0 = m * K;
    for (let n = 0; n < N; n++) {
      const b0 = n * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += A[a0 + k]! * B[b0 + k]!;
      C[m * N + n] = s;
    }
  }
}

/** dst[cols,rows] = src[rows,cols]^T */
export function transpose(src: Float32Array, dst: Float32Array, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    const ro = r * cols;
    for (let c = 0; c < cols; c++) dst[c * rows + r] = src[ro + c]!;
  }
}
