/* A fuzz input read from the front, as libFuzzer's FuzzedDataProvider does: a byte or a number
 * past the end reads as 0, so every input decodes to some call. Shared by the C harnesses. */
#ifndef PKTSTREAM_FUZZ_INPUT_H
#define PKTSTREAM_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct input {
	const uint8_t *p;
	size_t left;
};

static inline uint8_t in_u8(struct input *in)
{
	if (!in->left)
		return 0;
	in->left--;
	return *in->p++;
}

static inline uint16_t in_u16(struct input *in)
{
	uint16_t lo = in_u8(in);
	return (uint16_t)(lo | (uint16_t)in_u8(in) << 8);
}

static inline int64_t in_i64(struct input *in)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)in_u8(in) << (8 * i);
	return (int64_t)v;
}

/* A property of the function under test does not hold: report it as a crash (the input is kept). */
#define CHECK(cond, ...)                                                                     \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                        \
			fputc('\n', stderr);                                                 \
			abort();                                                             \
		}                                                                            \
	} while (0)

#endif
