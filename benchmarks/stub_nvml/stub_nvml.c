/* A stand-in for libnvidia-ml.so.1 for `make bench-node`: the production read path (the real
 * NvmlBackend over nvidia-ml-py) measured without a GPU and without the Python fake.
 *
 * It exports the NVML functions nvidia-ml-py calls for the daemon, with NVML's C signatures, and
 * answers from memory in well under a microsecond, as the real library's reads take 1-5 us
 * (docs/measurements: GetPowerUsage 1.3 us). One exception, as measured: an energy read sleeps
 * 3.9 ms (wall time; POLCA_STUB_NVML_ENERGY_READ_US changes it). Setters are remembered, not
 * modelled: power does not follow them. This is not a GPU model; the Python fake is.
 *
 * Environment: POLCA_STUB_NVML_UUIDS (comma-separated GPU UUIDs; their count is the GPU count,
 * default 8 made-up ones), POLCA_STUB_NVML_POWER_MW (default 550000).
 *
 * Built by benchmarks/bench_node.py: cc -shared -fPIC -O2 -o libnvidia-ml.so.1 stub_nvml.c
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
};
enum { NVML_CLOCK_GRAPHICS = 0, NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2 };
enum { FI_POWER_AVERAGE = 185, FI_POWER_INSTANT = 186, VALUE_TYPE_UNSIGNED_INT = 1 };

#define MAX_GPUS 64
#define MAX_SM_MHZ 1980
#define MEMORY_MHZ 2619
#define MIN_LIMIT_MW 200000u
#define MAX_LIMIT_MW 700000u

typedef struct {
    int index;
    char uuid[96];
    unsigned int limit_mw;
    unsigned int locked_max_mhz; /* 0: not locked */
    double energy_mj;
    double energy_at_s;
} device_t;

typedef union {
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    long long sllVal;
    int siVal;
    unsigned short usVal;
} value_t;

typedef struct { /* nvmlFieldValue_t */
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    value_t value;
} field_value_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} utilization_t;

static device_t devices[MAX_GPUS];
static unsigned int device_count;
static int initialised;
static unsigned int power_mw = 550000u;
static long energy_read_us = 3900;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void setup(void) {
    const char *power = getenv("POLCA_STUB_NVML_POWER_MW");
    const char *cost = getenv("POLCA_STUB_NVML_ENERGY_READ_US");
    const char *uuids = getenv("POLCA_STUB_NVML_UUIDS");
    if (power) power_mw = (unsigned int)strtoul(power, NULL, 10);
    if (cost) energy_read_us = strtol(cost, NULL, 10);
    device_count = 0;
    if (uuids && *uuids) {
        const char *p = uuids;
        while (*p && device_count < MAX_GPUS) {
            size_t n = strcspn(p, ",");
            device_t *d = &devices[device_count];
            snprintf(d->uuid, sizeof d->uuid, "%.*s", (int)(n < 95 ? n : 95), p);
            device_count++;
            p += n + (p[n] == ',');
        }
    } else {
        for (; device_count < 8; device_count++)
            snprintf(devices[device_count].uuid, sizeof devices[0].uuid,
                     "GPU-00000000-0000-4000-8000-%012u", device_count);
    }
    double t = now_s();
    for (unsigned int i = 0; i < device_count; i++) {
        devices[i].index = (int)i;
        devices[i].limit_mw = MAX_LIMIT_MW;
        devices[i].locked_max_mhz = 0;
        devices[i].energy_mj = 0;
        devices[i].energy_at_s = t;
    }
}

static device_t *dev(void *handle) {
    device_t *d = (device_t *)handle;
    if (!initialised || d < devices || d >= devices + device_count) return NULL;
    return d;
}

#define DEVICE_OR_FAIL(h)                                                         \
    device_t *d = dev(h);                                                         \
    if (!d) return initialised ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED

static unsigned int gpu_power_mw(const device_t *d) {
    unsigned int p = power_mw < d->limit_mw ? power_mw : d->limit_mw;
    return p + (unsigned int)d->index * 1000u; /* GPUs differ a little, as real ones do */
}

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length) {
    if (!out || strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (!initialised) setup();
    initialised++;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}
const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    default: return "Unknown Error";
    }
}
nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_text("550.0-stub", version, length);
}
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *count = device_count;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **handle) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *handle = &devices[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetUUID(void *h, char *uuid, unsigned int length) {
    DEVICE_OR_FAIL(h);
    return copy_text(d->uuid, uuid, length);
}
nvmlReturn_t nvmlDeviceGetName(void *h, char *name, unsigned int length) {
    DEVICE_OR_FAIL(h);
    return copy_text("NVIDIA H100 80GB HBM3", name, length);
}
nvmlReturn_t nvmlDeviceGetMigMode(void *h, unsigned int *current, unsigned int *pending) {
    DEVICE_OR_FAIL(h);
    *current = *pending = 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(void *h, unsigned int *lo,
                                                          unsigned int *hi) {
    DEVICE_OR_FAIL(h);
    *lo = MIN_LIMIT_MW;
    *hi = MAX_LIMIT_MW;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(void *h, unsigned int *limit) {
    DEVICE_OR_FAIL(h);
    *limit = MAX_LIMIT_MW;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerManagementLimit(void *h, unsigned int *limit) {
    DEVICE_OR_FAIL(h);
    *limit = d->limit_mw;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(void *h, unsigned int *limit) {
    return nvmlDeviceGetPowerManagementLimit(h, limit);
}
nvmlReturn_t nvmlDeviceSetPowerManagementLimit(void *h, unsigned int limit) {
    DEVICE_OR_FAIL(h);
    if (limit < MIN_LIMIT_MW || limit > MAX_LIMIT_MW) return NVML_ERROR_INVALID_ARGUMENT;
    d->limit_mw = limit;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerUsage(void *h, unsigned int *power) {
    DEVICE_OR_FAIL(h);
    *power = gpu_power_mw(d);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetFieldValues(void *h, int count, field_value_t *values) {
    DEVICE_OR_FAIL(h);
    long long stamp_us = (long long)(now_s() * 1e6);
    for (int i = 0; i < count; i++) {
        field_value_t *v = &values[i];
        v->timestamp = stamp_us;
        v->latencyUsec = 0;
        if (v->fieldId == FI_POWER_AVERAGE || v->fieldId == FI_POWER_INSTANT) {
            v->nvmlReturn = NVML_SUCCESS;
            v->valueType = VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = gpu_power_mw(d);
        } else {
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *energy) {
    DEVICE_OR_FAIL(h);
    double t = now_s();
    d->energy_mj += gpu_power_mw(d) * (t - d->energy_at_s);
    d->energy_at_s = t;
    *energy = (unsigned long long)d->energy_mj;
    if (energy_read_us > 0) {
        struct timespec wait = {energy_read_us / 1000000, (energy_read_us % 1000000) * 1000};
        nanosleep(&wait, NULL);
    }
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(void *h, utilization_t *utilization) {
    DEVICE_OR_FAIL(h);
    utilization->gpu = 90;
    utilization->memory = 70;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTemperature(void *h, int sensor, unsigned int *temperature) {
    DEVICE_OR_FAIL(h);
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temperature = 30 + gpu_power_mw(d) / 14000u;
    return NVML_SUCCESS;
}
static unsigned int sm_mhz(const device_t *d) {
    return d->locked_max_mhz ? d->locked_max_mhz : MAX_SM_MHZ;
}
nvmlReturn_t nvmlDeviceGetClockInfo(void *h, int type, unsigned int *clock) {
    DEVICE_OR_FAIL(h);
    *clock = type == NVML_CLOCK_MEM ? MEMORY_MHZ : sm_mhz(d);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMaxClockInfo(void *h, int type, unsigned int *clock) {
    DEVICE_OR_FAIL(h);
    *clock = type == NVML_CLOCK_MEM ? MEMORY_MHZ : MAX_SM_MHZ;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetSupportedMemoryClocks(void *h, unsigned int *count,
                                                unsigned int *clocks) {
    DEVICE_OR_FAIL(h);
    if (!clocks || *count < 1) {
        *count = 1;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = 1;
    clocks[0] = MEMORY_MHZ;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetSupportedGraphicsClocks(void *h, unsigned int memory_mhz,
                                                  unsigned int *count, unsigned int *clocks) {
    DEVICE_OR_FAIL(h);
    if (memory_mhz != MEMORY_MHZ) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = (MAX_SM_MHZ - 345) / 15 + 1; /* 1980 down to 345 MHz in 15 MHz steps */
    if (!clocks || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n;
    for (unsigned int i = 0; i < n; i++) clocks[i] = MAX_SM_MHZ - 15 * i;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceSetGpuLockedClocks(void *h, unsigned int min_mhz, unsigned int max_mhz) {
    DEVICE_OR_FAIL(h);
    if (min_mhz > max_mhz) return NVML_ERROR_INVALID_ARGUMENT;
    d->locked_max_mhz = max_mhz;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceResetGpuLockedClocks(void *h) {
    DEVICE_OR_FAIL(h);
    d->locked_max_mhz = 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(void *h, unsigned long long *reasons) {
    DEVICE_OR_FAIL(h);
    *reasons = d->locked_max_mhz ? 0x2ull : 0x0ull; /* applications clocks setting */
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(void *h, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksEventReasons(h, reasons);
}
