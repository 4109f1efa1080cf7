using JobRunner.Configuration;

namespace JobRunner.Client;

/// <summary>Checks a request before anything is stored; collects every problem, each naming the fix.</summary>
internal static class JobRequestValidator
{
    public static void Validate(JobRequest request, WorkloadRegistry registry)
    {
        ArgumentNullException.ThrowIfNull(request);
        List<string>? errors = null;

        var workload = string.IsNullOrEmpty(request.Workload) ? null : registry.Find(request.Workload);
        if (string.IsNullOrEmpty(request.Workload))
        {
            Add(ref errors, "Workload is empty. Set JobRequest.Workload to the name of a registered workload.");
        }
        else if (workload is null)
        {
            var known = registry.Names.Count == 0 ? "none are registered" : "registered: " + string.Join(", ", registry.Names);
            Add(ref errors, $"Workload '{request.Workload}' is not registered ({known}). Register it with services.AddJobRunner(r => r.AddWorkload<T>(\"{request.Workload}\")).");
        }

        if (request.Priority is < JobRequest.MinPriority or > JobRequest.MaxPriority)
        {
            Add(ref errors, $"Priority {request.Priority} is outside {JobRequest.MinPriority}–{JobRequest.MaxPriority}. Use a value from 1 (lowest) to 10 (highest); the default is 5.");
        }

        if (request.Timeout is { } timeout && timeout <= TimeSpan.Zero)
        {
            Add(ref errors, $"Timeout {timeout} is not positive. Set a positive time, or leave it null to use the workload's timeout.");
        }

        if (workload is { Registration.RequiresInput: true } && IsMissing(request.Input))
        {
            var type = workload.Registration.InputType?.Name ?? "input";
            Add(ref errors, $"Workload '{request.Workload}' requires an input ({type}) but the request has none. Create the request with JobRequest.Create(\"{request.Workload}\", input).");
        }

        if (!Names.IsValidName(request.Tenant))
        {
            Add(ref errors, $"Tenant '{request.Tenant}' is not a valid name: {Names.NameRule}.");
        }

        CheckKey(ref errors, request.DedupeKey, nameof(JobRequest.DedupeKey));
        CheckKey(ref errors, request.ConcurrencyKey, nameof(JobRequest.ConcurrencyKey));
        CheckText(ref errors, request.CorrelationId, nameof(JobRequest.CorrelationId));

        if (request.Labels is null)
        {
            Add(ref errors, "Labels is null. Leave it unset or pass an empty dictionary.");
        }
        else
        {
            foreach (var (key, value) in request.Labels)
            {
                if (!Names.IsValidLabelKey(key))
                {
                    Add(ref errors, $"Label key '{key}' is not valid: use an optional DNS prefix and '/', then a name ({Names.NameRule}).");
                }

                if (!Names.IsValidLabelValue(value))
                {
                    Add(ref errors, $"Label '{key}' has the value '{value}', which is not valid: use an empty value or a name ({Names.NameRule}).");
                }
            }
        }

        if (request.Affinity is not null)
        {
            // Parsed here so that a malformed expression fails the submit; workers parse each distinct one once again.
            Scheduling.AffinityExpression.Parse(request.Affinity, errors ??= []);
            if (errors.Count == 0)
            {
                errors = null;
            }
        }

        if (errors is not null)
        {
            throw new JobValidationException(errors);
        }
    }

    private static bool IsMissing(ReadOnlyMemory<byte> input)
    {
        var span = input.Span.Trim(" \t\r\n"u8);
        return span.IsEmpty || span.SequenceEqual("null"u8);
    }

    private static void CheckKey(ref List<string>? errors, string? key, string name)
    {
        if (key is not null && (key.Length == 0 || key.Length > Names.MaxKeyLength))
        {
            Add(ref errors, $"{name} has {key.Length} characters. Use 1 to {Names.MaxKeyLength} characters, or leave it null.");
        }

        CheckText(ref errors, key, name);
    }

    /// <summary>Keys and ids are stored and compared as text: see <see cref="StorableText"/>.</summary>
    private static void CheckText(ref List<string>? errors, string? value, string name)
    {
        if (value is not null && StorableText.IndexOfUnstorable(value) is var i and >= 0)
        {
            var c = value[i];
            Add(ref errors, $"{name} has {(c == '\0' ? "a NUL character" : "an unpaired surrogate")} (U+{(int)c:X4}) at index {i}. Use text without NUL and with whole surrogate pairs.");
        }
    }

    private static void Add(ref List<string>? errors, string error) => (errors ??= []).Add(error);
}
