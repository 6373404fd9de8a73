/*
 * floor: the cheapest read a Redis module can serve through the public module
 * API, as a yardstick for NSCACHE.GET in `make bench-redis` (issue 8). Never
 * loaded in production, never built by `make build`.
 *
 * FLOOR.GET key         opens `key`, replies its string value (or nil):
 *                       what any module command that reads a key pays over
 *                       plain GET (the module context, the key handle).
 * FLOOR.NSGET ns key    the same for the name `ns:{key}`, built per call:
 *                       adds what any namespaced read pays (a third
 *                       argument, a key name string object).
 * FLOOR.NSSET ns key ttl value
 *                       stores `value` as a plain string under `ns:{key}`
 *                       with a ttl in seconds, replicated as itself plus the
 *                       absolute expiry (PEXPIREAT), as any module write with
 *                       a relative ttl must be for replicas and the AOF to
 *                       agree with the primary.
 *
 * No statistics, no ACL check, no type of its own: nscache does all three on
 * top, so its ratios to plain GET and SET EX cannot be better than
 * FLOOR.NSGET's and FLOOR.NSSET's.
 */
#include <string.h>

#include "redismodule.h"

static int reply_string_key(RedisModuleCtx *ctx, RedisModuleString *name) {
    RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_READ);
    if (key == NULL || RedisModule_KeyType(key) != REDISMODULE_KEYTYPE_STRING) {
        if (key != NULL) RedisModule_CloseKey(key);
        return RedisModule_ReplyWithNull(ctx);
    }
    size_t len = 0;
    char *value = RedisModule_StringDMA(key, &len, REDISMODULE_READ);
    RedisModule_ReplyWithStringBuffer(ctx, value, len);
    RedisModule_CloseKey(key);
    return REDISMODULE_OK;
}

static int floor_get(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    return reply_string_key(ctx, argv[1]);
}

static size_t stored_name(RedisModuleString *nsarg, RedisModuleString *keyarg, char *buf, size_t room);

static int floor_nsget(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 3) return RedisModule_WrongArity(ctx);
    char buf[256];
    size_t len = stored_name(argv[1], argv[2], buf, sizeof(buf));
    if (len == 0) return RedisModule_ReplyWithError(ctx, "ERR too long");
    RedisModuleString *name = RedisModule_CreateString(ctx, buf, len);
    int status = reply_string_key(ctx, name);
    RedisModule_FreeString(ctx, name);
    return status;
}

/* Writes "ns:{key}" into buf (room for len bytes); returns the name's length, or 0. */
static size_t stored_name(RedisModuleString *nsarg, RedisModuleString *keyarg, char *buf, size_t room) {
    size_t ns_len = 0, key_len = 0;
    const char *ns = RedisModule_StringPtrLen(nsarg, &ns_len);
    const char *k = RedisModule_StringPtrLen(keyarg, &key_len);
    if (ns_len + key_len + 3 > room) return 0;
    memcpy(buf, ns, ns_len);
    buf[ns_len] = ':';
    buf[ns_len + 1] = '{';
    memcpy(buf + ns_len + 2, k, key_len);
    buf[ns_len + 2 + key_len] = '}';
    return ns_len + key_len + 3;
}

static int floor_nsset(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 5) return RedisModule_WrongArity(ctx);
    long long ttl = 0;
    if (RedisModule_StringToLongLong(argv[3], &ttl) != REDISMODULE_OK || ttl <= 0)
        return RedisModule_ReplyWithError(ctx, "ERR bad ttl");
    char buf[256];
    size_t len = stored_name(argv[1], argv[2], buf, sizeof(buf));
    if (len == 0) return RedisModule_ReplyWithError(ctx, "ERR too long");
    RedisModuleString *name = RedisModule_CreateString(ctx, buf, len);
    RedisModuleKey *key = RedisModule_OpenKey(ctx, name, REDISMODULE_WRITE);
    RedisModule_StringSet(key, argv[4]);
    long long at = RedisModule_Milliseconds() + ttl * 1000;
    RedisModule_SetExpire(key, ttl * 1000);
    RedisModule_CloseKey(key);
    RedisModule_ReplicateVerbatim(ctx);
    RedisModule_Replicate(ctx, "PEXPIREAT", "sl", name, at);
    RedisModule_FreeString(ctx, name);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    if (RedisModule_Init(ctx, "floor", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "floor.get", floor_get, "readonly fast", 1, 1, 1) ==
        REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "floor.nsget", floor_nsget, "readonly fast", 2, 2, 1) ==
        REDISMODULE_ERR)
        return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "floor.nsset", floor_nsset, "write deny-oom", 2, 2, 1) ==
        REDISMODULE_ERR)
        return REDISMODULE_ERR;
    return REDISMODULE_OK;
}
