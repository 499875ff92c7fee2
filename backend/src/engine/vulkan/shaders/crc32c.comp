// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//
// CRC-32C (spec §8.4) of one chunk, in parallel. CRC arithmetic is linear
// over GF(2): with R(r, d) the CRC register after the bytes d from the
// register r (no final XOR), and d cut into blocks d_0 .. d_k-1,
//
//   R(r, d) = r * x^(8 len(d))  +  sum over i of  R(0, d_i) * x^(8 after_i)
//
// mod P, where after_i is how many bytes of d follow d_i. Each invocation
// computes R(0, d_i) of its block with a byte table, multiplies it by
// x^(8 after_i) (square-and-multiply over the powers x^(8 * 2^k)), and
// XORs it into `acc` (atomicXor: the sum does not depend on the order);
// invocation 0 adds the incoming register's term. The host sets `acc` to 0
// before and reads the register for the next chunk from it after.
//
// Polynomials are bit-reflected, as the CRC's register is: bit 31 holds
// x^0, bit 0 holds x^31.
//
// Built by build.sh into crc32c.spv (checked in).

#version 450

layout(local_size_x = 64) in;

layout(set = 0, binding = 0, std430) readonly buffer Data { uint data[]; };
layout(set = 0, binding = 2, std430) buffer Result { uint acc; };

layout(push_constant) uniform Params {
    // Bytes of the chunk.
    uint len;
    // Bytes per invocation, a multiple of 4.
    uint block;
    // The CRC register before the chunk (the seed, inverted, at the start).
    uint register_in;
    uint unused;
} p;

// The Castagnoli polynomial, bit-reflected.
const uint POLY = 0x82F63B78u;
// x^0, bit-reflected.
const uint ONE = 0x80000000u;

// The register after each byte value, from a zero register.
shared uint table[256];
// x^(8 * 2^k) mod P.
shared uint powers[32];

// a * b mod P.
uint multiply(uint a, uint b) {
    uint product = 0u;
    for (int i = 0; i < 32; i++) {
        if ((a & ONE) != 0u) {
            product ^= b;
        }
        a <<= 1;
        b = (b & 1u) != 0u ? (b >> 1) ^ POLY : b >> 1;
    }
    return product;
}

// x^(8 n) mod P.
uint shift_bytes(uint n) {
    uint result = ONE;
    for (uint k = 0u; n != 0u; k++, n >>= 1) {
        if ((n & 1u) != 0u) {
            result = multiply(result, powers[k]);
        }
    }
    return result;
}

void main() {
    uint local = gl_LocalInvocationID.x;
    for (uint i = local; i < 256u; i += gl_WorkGroupSize.x) {
        uint c = i;
        for (int bit = 0; bit < 8; bit++) {
            c = (c & 1u) != 0u ? (c >> 1) ^ POLY : c >> 1;
        }
        table[i] = c;
    }
    if (local == 0u) {
        // x^8.
        uint power = ONE >> 8;
        for (int k = 0; k < 32; k++) {
            powers[k] = power;
            power = multiply(power, power);
        }
    }
    memoryBarrierShared();
    barrier();

    uint start = gl_GlobalInvocationID.x * p.block;
    if (start >= p.len) {
        return;
    }
    uint end = min(start + p.block, p.len);
    uint c = 0u;
    uint at = start;
    for (; at + 4u <= end; at += 4u) {
        c ^= data[at >> 2];
        c = table[c & 0xffu] ^ (c >> 8);
        c = table[c & 0xffu] ^ (c >> 8);
        c = table[c & 0xffu] ^ (c >> 8);
        c = table[c & 0xffu] ^ (c >> 8);
    }
    for (; at < end; at++) {
        uint byte_ = (data[at >> 2] >> (8u * (at & 3u))) & 0xffu;
        c = table[(c ^ byte_) & 0xffu] ^ (c >> 8);
    }
    uint term = multiply(c, shift_bytes(p.len - end));
    if (start == 0u) {
        term ^= multiply(p.register_in, shift_bytes(p.len));
    }
    atomicXor(acc, term);
}
