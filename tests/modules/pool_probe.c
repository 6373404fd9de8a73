/*
 * pool_probe: a test module for redis_acl_cache.rs. It leaves a connected
 * client's id on a pooled module client, then runs commands through
 * RedisModule_Call, the way any module with blocking commands and a timer or
 * a command of its own can: RedisModule_GetThreadSafeContext(bc) copies the
 * blocked client's id into a pooled client (module.c, 7.0.15:7718) and
 * Redis never resets it when the client goes back to the pool, so the next
 * RedisModule_Call runs on a client that carries that id.
 *
 * PROBE.BLOCK                      block and unblock the caller at once,
 *                                  through a thread-safe context
 * PROBE.CALL cmd arg...            RedisModule_Call as the caller's user ("C")
 * PROBE.LATER ms user|- cmd arg... a timer runs cmd as `user` ("C") or as
 *                                  nobody (`-`)
 * PROBE.RESULT                     the last call's reply, as RESP text
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redismodule.h"

static char result[1024] = "none";

static int reply_unblocked(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    return RedisModule_ReplyWithSimpleString(ctx, "unblocked");
}

static int probe_block(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    RedisModuleBlockedClient *bc = RedisModule_BlockClient(ctx, reply_unblocked, NULL, NULL, 0);
    RedisModuleCtx *ts = RedisModule_GetThreadSafeContext(bc);
    RedisModule_FreeThreadSafeContext(ts);
    RedisModule_UnblockClient(bc, NULL);
    return REDISMODULE_OK;
}

static void record(RedisModuleCallReply *reply) {
    if (reply == NULL) {
        snprintf(result, sizeof result, "call failed: errno %d", errno);
        return;
    }
    size_t len = 0;
    const char *proto = RedisModule_CallReplyProto(reply, &len);
    snprintf(result, sizeof result, "%.*s", (int)len, proto);
}

static int probe_call(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2) return RedisModule_WrongArity(ctx);
    const char *cmd = RedisModule_StringPtrLen(argv[1], NULL);
    RedisModuleCallReply *reply = RedisModule_Call(ctx, cmd, "Cv", argv + 2, (size_t)(argc - 2));
    record(reply);
    if (reply != NULL) RedisModule_FreeCallReply(reply);
    return RedisModule_ReplyWithStringBuffer(ctx, result, strlen(result));
}

struct job {
    char user[64];
    int as_user;
    int argc;
    RedisModuleString **argv;
};

static void run_job(RedisModuleCtx *ctx, void *data) {
    struct job *job = data;
    RedisModuleUser *user = NULL;
    if (job->as_user) {
        RedisModuleString *name = RedisModule_CreateString(ctx, job->user, strlen(job->user));
        user = RedisModule_GetModuleUserFromUserName(name);
        RedisModule_FreeString(ctx, name);
        RedisModule_SetContextUser(ctx, user);
    }
    const char *cmd = RedisModule_StringPtrLen(job->argv[0], NULL);
    RedisModuleCallReply *reply =
        RedisModule_Call(ctx, cmd, job->as_user ? "Cv" : "v", job->argv + 1, (size_t)(job->argc - 1));
    record(reply);
    if (reply != NULL) RedisModule_FreeCallReply(reply);
    if (user != NULL) {
        RedisModule_SetContextUser(ctx, NULL);
        RedisModule_FreeModuleUser(user);
    }
    for (int i = 0; i < job->argc; i++) RedisModule_FreeString(NULL, job->argv[i]);
    free(job->argv);
    free(job);
}

static int probe_later(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 4) return RedisModule_WrongArity(ctx);
    long long ms = 0;
    if (RedisModule_StringToLongLong(argv[1], &ms) != REDISMODULE_OK || ms < 0)
        return RedisModule_ReplyWithError(ctx, "ERR bad delay");
    struct job *job = calloc(1, sizeof *job);
    const char *user = RedisModule_StringPtrLen(argv[2], NULL);
    job->as_user = strcmp(user, "-") != 0;
    snprintf(job->user, sizeof job->user, "%s", user);
    job->argc = argc - 3;
    job->argv = calloc((size_t)job->argc, sizeof *job->argv);
    for (int i = 0; i < job->argc; i++) job->argv[i] = RedisModule_CreateStringFromString(NULL, argv[i + 3]);
    snprintf(result, sizeof result, "pending");
    RedisModule_CreateTimer(ctx, ms, run_job, job);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

static int probe_result(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    return RedisModule_ReplyWithStringBuffer(ctx, result, strlen(result));
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    if (RedisModule_Init(ctx, "pool_probe", 1, REDISMODULE_APIVER_1) == REDISMODULE_ERR) return REDISMODULE_ERR;
    if (RedisModule_CreateCommand(ctx, "probe.block", probe_block, "", 0, 0, 0) == REDISMODULE_ERR ||
        RedisModule_CreateCommand(ctx, "probe.call", probe_call, "", 0, 0, 0) == REDISMODULE_ERR ||
        RedisModule_CreateCommand(ctx, "probe.later", probe_later, "", 0, 0, 0) == REDISMODULE_ERR ||
        RedisModule_CreateCommand(ctx, "probe.result", probe_result, "", 0, 0, 0) == REDISMODULE_ERR)
        return REDISMODULE_ERR;
    return REDISMODULE_OK;
}
