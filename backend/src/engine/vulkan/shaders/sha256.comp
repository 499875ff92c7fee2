// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//
// SHA-256 (spec §8.5, FIPS 180-4) compression of `blocks` 64-byte blocks
// into the chaining value `chain`, by one invocation: the hash is serial. The
// host pads the last block (0x80, zeros, the message's length in bits,
// big-endian), keeps `chain` in device-visible memory from one chunk to the
// next, and reads the digest from it at the end.
//
// The rounds are unrolled (macros), so that the message schedule is indexed
// by constants and can live in registers, and the only loop is over the
// blocks: lavapipe (Mesa 22.3) stops any invocation after 65535 loop
// iterations in all, so a dispatch must take fewer blocks than that (the
// engine gives it at most a few thousand).
//
// Built by build.sh into sha256.spv (checked in).

#version 450

layout(local_size_x = 1) in;

layout(set = 0, binding = 0, std430) readonly buffer Data { uint data[]; };
layout(set = 0, binding = 2, std430) buffer State { uint chain[8]; };

layout(push_constant) uniform Params {
    // 64-byte blocks to compress.
    uint blocks;
    uint unused0;
    uint unused1;
    uint unused2;
} p;

const uint K[64] = uint[](
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u,
    0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u,
    0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu,
    0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u,
    0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u,
    0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u,
    0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u,
    0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u
);

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32u - (n))))
#define SUM0(x) (ROTR(x, 2u) ^ ROTR(x, 13u) ^ ROTR(x, 22u))
#define SUM1(x) (ROTR(x, 6u) ^ ROTR(x, 11u) ^ ROTR(x, 25u))
#define SIGMA0(x) (ROTR(x, 7u) ^ ROTR(x, 18u) ^ ((x) >> 3))
#define SIGMA1(x) (ROTR(x, 17u) ^ ROTR(x, 19u) ^ ((x) >> 10))
#define CHOOSE(x, y, z) (((x) & (y)) ^ (~(x) & (z)))
#define MAJORITY(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))

// Host memory is little-endian; SHA-256 reads its words big-endian.
#define BIG_ENDIAN(x) \
    (((x) >> 24) | (((x) >> 8) & 0xff00u) | (((x) << 8) & 0xff0000u) | ((x) << 24))

// Word t of the message schedule, for t >= 16, over word t - 16.
#define SCHEDULE(t) \
    w[(t) & 15] += SIGMA0(w[((t) - 15) & 15]) + w[((t) - 7) & 15] + SIGMA1(w[((t) - 2) & 15])

// Round t, the working variables named in their roles of the round.
#define ROUND(a, b, c, d, e, f, g, h, t) \
    { \
        uint t1 = h + SUM1(e) + CHOOSE(e, f, g) + K[t] + w[(t) & 15]; \
        d += t1; \
        h = t1 + SUM0(a) + MAJORITY(a, b, c); \
    }

// Eight rounds from round t: the roles come back to where they started.
#define EIGHT(t) \
    ROUND(a, b, c, d, e, f, g, h, (t)); \
    ROUND(h, a, b, c, d, e, f, g, (t) + 1); \
    ROUND(g, h, a, b, c, d, e, f, (t) + 2); \
    ROUND(f, g, h, a, b, c, d, e, (t) + 3); \
    ROUND(e, f, g, h, a, b, c, d, (t) + 4); \
    ROUND(d, e, f, g, h, a, b, c, (t) + 5); \
    ROUND(c, d, e, f, g, h, a, b, (t) + 6); \
    ROUND(b, c, d, e, f, g, h, a, (t) + 7)

// As EIGHT, each round's schedule word computed first.
#define EIGHT_SCHEDULED(t) \
    SCHEDULE((t)); ROUND(a, b, c, d, e, f, g, h, (t)); \
    SCHEDULE((t) + 1); ROUND(h, a, b, c, d, e, f, g, (t) + 1); \
    SCHEDULE((t) + 2); ROUND(g, h, a, b, c, d, e, f, (t) + 2); \
    SCHEDULE((t) + 3); ROUND(f, g, h, a, b, c, d, e, (t) + 3); \
    SCHEDULE((t) + 4); ROUND(e, f, g, h, a, b, c, d, (t) + 4); \
    SCHEDULE((t) + 5); ROUND(d, e, f, g, h, a, b, c, (t) + 5); \
    SCHEDULE((t) + 6); ROUND(c, d, e, f, g, h, a, b, (t) + 6); \
    SCHEDULE((t) + 7); ROUND(b, c, d, e, f, g, h, a, (t) + 7)

#define LOAD(i) w[i] = BIG_ENDIAN(data[base + (i)])

void main() {
    uint h0 = chain[0], h1 = chain[1], h2 = chain[2], h3 = chain[3];
    uint h4 = chain[4], h5 = chain[5], h6 = chain[6], h7 = chain[7];
    uint w[16];
    for (uint block = 0u; block < p.blocks; block++) {
        uint base = block * 16u;
        LOAD(0); LOAD(1); LOAD(2); LOAD(3);
        LOAD(4); LOAD(5); LOAD(6); LOAD(7);
        LOAD(8); LOAD(9); LOAD(10); LOAD(11);
        LOAD(12); LOAD(13); LOAD(14); LOAD(15);
        uint a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7;
        EIGHT(0);
        EIGHT(8);
        EIGHT_SCHEDULED(16);
        EIGHT_SCHEDULED(24);
        EIGHT_SCHEDULED(32);
        EIGHT_SCHEDULED(40);
        EIGHT_SCHEDULED(48);
        EIGHT_SCHEDULED(56);
        h0 += a; h1 += b; h2 += c; h3 += d;
        h4 += e; h5 += f; h6 += g; h7 += h;
    }
    chain[0] = h0; chain[1] = h1; chain[2] = h2; chain[3] = h3;
    chain[4] = h4; chain[5] = h5; chain[6] = h6; chain[7] = h7;
}
