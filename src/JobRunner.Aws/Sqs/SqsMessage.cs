using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace JobRunner.Aws.Sqs;

/// <summary>
/// The body of a dispatch message: a compact JSON object with the job's id and what the scheduler needs to order it
/// (<c>{"v":1,"id":…,"p":…,"t":…,"w":…,"k":…,"a":…,"e":…,"d":…}</c>, times in Unix milliseconds), or a pointer to a body
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

            if (job.Affinity is { } affinity)
            {
                writer.WriteString("a", affinity);
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
        // One forward pass of a Utf8JsonReader over the UTF-8 body: no document, no copies beyond the job's strings.
        job = null!;
        pointer = null;
        var rented = ArrayPool<byte>.Shared.Rent(Encoding.UTF8.GetMaxByteCount(body.Length));
        try
        {
            var length = Encoding.UTF8.GetBytes(body, rented);
            var reader = new Utf8JsonReader(rented.AsSpan(0, length));
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                problem = "not a JobRunner dispatch message (version 1)";
                return false;
            }

            int? version = null, priority = null;
            Guid? id = null;
            string? tenant = null, workload = null, key = null, affinity = null;
            long? enqueued = null, due = null;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var name = reader.ValueSpan;
                reader.Read();
                if (name.SequenceEqual("v"u8) && reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out var v))
                {
                    version = v;
                }
                else if (name.SequenceEqual("s3"u8) && reader.TokenType == JsonTokenType.String)
                {
                    pointer = reader.GetString();
                }
                else if (name.SequenceEqual("id"u8) && reader.TokenType == JsonTokenType.String && reader.TryGetGuid(out var guid))
                {
                    id = guid;
                }
                else if (name.SequenceEqual("p"u8) && reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out var p))
                {
                    priority = p;
                }
                else if (name.SequenceEqual("t"u8) && reader.TokenType == JsonTokenType.String)
                {
                    tenant = reader.GetString();
                }
                else if (name.SequenceEqual("w"u8) && reader.TokenType == JsonTokenType.String)
                {
                    workload = reader.GetString();
                }
                else if (name.SequenceEqual("k"u8) && reader.TokenType == JsonTokenType.String)
                {
                    key = reader.GetString();
                }
                else if (name.SequenceEqual("a"u8) && reader.TokenType == JsonTokenType.String)
                {
                    affinity = reader.GetString();
                }
                else if (name.SequenceEqual("e"u8) && reader.TokenType == JsonTokenType.Number && reader.TryGetInt64(out var e))
                {
                    enqueued = e;
                }
                else if (name.SequenceEqual("d"u8) && reader.TokenType == JsonTokenType.Number && reader.TryGetInt64(out var d))
                {
                    due = d;
                }
                else
                {
                    // A field a later version added, or one of a type this version does not read.
                    reader.Skip();
                }
            }

            if (reader.TokenType != JsonTokenType.EndObject || reader.Read())
            {
                problem = "the body is not valid: it is not one complete JSON object";
                return false;
            }

            if (version != 1)
            {
                problem = "not a JobRunner dispatch message (version 1)";
                return false;
            }

            if (pointer is { Length: > 0 })
            {
                problem = null;
                return true;
            }

            pointer = null;
            if (id is null || priority is not (>= JobRequest.MinPriority and <= JobRequest.MaxPriority) || string.IsNullOrEmpty(tenant) || string.IsNullOrEmpty(workload) || enqueued is null)
            {
                problem = "a required field (id, p, t, w, e) is missing or invalid";
                return false;
            }

            job = new QueuedJob
            {
                Id = new JobId(id.Value),
                Priority = priority.Value,
                Tenant = tenant,
                Workload = workload,
                ConcurrencyKey = key,
                Affinity = affinity,
                EnqueuedAt = DateTimeOffset.FromUnixTimeMilliseconds(enqueued.Value),
                DueAt = due is { } dueMs ? DateTimeOffset.FromUnixTimeMilliseconds(dueMs) : null,
            };
            problem = null;
            return true;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentOutOfRangeException)
        {
            pointer = null;
            problem = "the body is not valid: " + e.Message;
            return false;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    public static string Seconds(TimeSpan value) => ((long)Math.Ceiling(value.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
}

/// <summary>The delivery handle of a received message, kept in <see cref="QueuedJob.Receipt"/>.</summary>
/// <param name="Band">The index of the band (queue) it came from.</param>
/// <param name="Handle">The SQS receipt handle.</param>
/// <param name="ReceivedAt">When its receive was sent (its visibility started no earlier).</param>
/// <param name="Visibility">The visibility it was received with.</param>
/// <param name="PayloadKey">The S3 key of an offloaded body, deleted with the message.</param>
/// <param name="ArrivedAt">When the receive's answer arrived (a long poll may wait up to 20 s before it answers; the
/// visibility started about then).</param>
internal sealed record SqsReceipt(int Band, string Handle, DateTimeOffset ReceivedAt, TimeSpan Visibility, string? PayloadKey, DateTimeOffset ArrivedAt);
