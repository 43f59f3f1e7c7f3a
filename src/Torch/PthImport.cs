using System.Collections;
using Ecmt.Engine.Model;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Ecmt.Torch;

/// <summary>
/// Imports a PyTorch checkpoint (<c>torch.save(model.state_dict())</c>, the zip format of PyTorch ≥ 1.6) as named
/// float tensors. Checkpoints that wrap the state dict (<c>{"model": …}</c>, <c>{"state_dict": …}</c>, as timm's
/// training scripts write) are unwrapped; a <c>module.</c> prefix from DataParallel is removed.
/// </summary>
public static class PthImport
{
    static readonly string[] Wrappers = ["state_dict", "model", "model_ema", "module"];

    public static Dictionary<string, DenseTensor> Load(string path)
    {
        TorchRuntime.EnsureLoaded();
        Hashtable table;
        try
        {
            using var stream = File.OpenRead(path);
            table = PyTorchUnpickler.UnpickleStateDict(stream);
        }
        catch (Exception e) when (e is not FileNotFoundException)
        {
            throw new InvalidDataException($"{path} is not a PyTorch state dict checkpoint readable here: {e.Message}", e);
        }
        var result = new Dictionary<string, DenseTensor>(StringComparer.Ordinal);
        Collect(table, result, path);
        if (result.Count == 0) throw new InvalidDataException($"{path} holds no tensors");
        if (result.Keys.All(k => k.StartsWith("module.", StringComparison.Ordinal)))
            result = result.ToDictionary(p => p.Key["module.".Length..], p => p.Value, StringComparer.Ordinal);
        return result;
    }

    static void Collect(Hashtable table, Dictionary<string, DenseTensor> result, string path)
    {
        // A wrapper dict holds the state dict under one of a few well-known keys.
        foreach (var wrapper in Wrappers)
        {
            if (table[wrapper] is Hashtable inner && !table.Values.OfType<Tensor>().Any())
            {
                Collect(inner, result, path);
                return;
            }
        }
        foreach (DictionaryEntry entry in table)
        {
            if (entry.Value is Tensor tensor)
            {
                // BEiT / EVA checkpoints store the relative position index (int64) as a buffer; binding checks it.
                if (!tensor.is_floating_point() && !((string)entry.Key).EndsWith("relative_position_index", StringComparison.Ordinal))
                    throw new InvalidDataException($"{path}: tensor '{entry.Key}' has dtype {tensor.dtype}; only floating-point tensors are imported");
                result[(string)entry.Key] = TensorConvert.ToDense(tensor);
                tensor.Dispose();
            }
        }
    }
}
