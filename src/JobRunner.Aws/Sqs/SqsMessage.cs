using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace JobRunner.Aws.Sqs;

/// <summary>
/// The body of a dispatch message: a compact JSON object with the job's id and what the scheduler needs to order it
/// (<c>{"v":1,"id":…,"p":…,"t":…,"w":…,"k":…,"e":…,"d":…}</c>, times in Unix milliseconds), or a pointer to a body
/// kept in S3 (<c>{"v":1,"s3":key}</c>). Job state stays in the job store.
/// </summary>
internal static class SqsMessage
{
    public static string Encode(QueuedJob job)
    {
        var buffer = new ArrayBufferWriter<byte>(192);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteNumber("v", 1);
            writer.WriteString("id", job.Id.Value);
            writer.WriteNumber("p", job.Priority);
            writer.WriteString("t", job.Tenant);
            writer.WriteString("w", job.Workload);
            if (job.ConcurrencyKey is { } key)
            {
                writer.WriteString("k", key);
            }

            writer.WriteNumber("e", job.EnqueuedAt.ToUnixTimeMilliseconds());
            if (job.DueAt is { } due)
            {
                writer.WriteNumber("d", due.ToUnixTimeMilliseconds());
            }

            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    public static string EncodePointer(string key)
    {
        var buffer = new ArrayBufferWriter<byte>(96);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteNumber("v", 1);
            writer.WriteString("s3", key);
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>Reads a body; <see langword="false"/> (with the reason) for a poison message that no version of JobRunner wrote.</summary>
    public static bool TryDecode(string body, out QueuedJob job, out string? pointer, out string? problem)
    {
        job = null!;
        pointer = null;
        try
        {
            using var doc = JsonDocument.Parse(body);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("v", out var v) || v.ValueKind != JsonValueKind.Number || v.GetInt32() != 1)
            {
                problem = "not a JobRunner dispatch message (version 1)";
                return false;
            }

            if (root.TryGetProperty("s3", out var s3) && s3.GetString() is { Length: > 0 } key)
            {
                pointer = key;
                problem = null;
                return true;
            }

            if (!root.TryGetProperty("id", out var id) || !id.TryGetGuid(out var guid)
                || !root.TryGetProperty("p", out var p) || !p.TryGetInt32(out var priority) || priority is < JobRequest.MinPriority or > JobRequest.MaxPriority
                || !root.TryGetProperty("t", out var t) || t.GetString() is not { Length: > 0 } tenant
                || !root.TryGetProperty("w", out var w) || w.GetString() is not { Length: > 0 } workload
                || !root.TryGetProperty("e", out var e) || !e.TryGetInt64(out var enqueued))
            {
                problem = "a required field (id, p, t, w, e) is missing or invalid";
                return false;
            }

            DateTimeOffset? due = root.TryGetProperty("d", out var d) && d.TryGetInt64(out var dueMs) ? DateTimeOffset.FromUnixTimeMilliseconds(dueMs) : null;
            job = new QueuedJob
            {
                Id = new JobId(guid),
                Priority = priority,
                Tenant = tenant,
                Workload = workload,
                ConcurrencyKey = root.TryGetProperty("k", out var k) ? k.GetString() : null,
                EnqueuedAt = DateTimeOffset.FromUnixTimeMilliseconds(enqueued),
                DueAt = due,
            };
            problem = null;
            return true;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or ArgumentOutOfRangeException)
        {
            problem = "the body is not valid: " + e.Message;
            return false;
        }
    }

    public static string Seconds(TimeSpan value) => ((long)Math.Ceiling(value.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
}

/// <summary>The delivery handle of a received message, kept in <see cref="QueuedJob.Receipt"/>.</summary>
/// <param name="Band">The index of the band (queue) it came from.</param>
/// <param name="Handle">The SQS receipt handle.</param>
/// <param name="ReceivedAt">When it was received.</param>
/// <param name="Visibility">The visibility it was received with.</param>
/// <param name="PayloadKey">The S3 key of an offloaded body, deleted with the message.</param>
internal sealed record SqsReceipt(int Band, string Handle, DateTimeOffset ReceivedAt, TimeSpan Visibility, string? PayloadKey);
