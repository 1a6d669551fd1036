# Read-only (nothing set): the power fields' structure and a bf16 GEMM burst sampled every ~20 ms
# through nvmlDeviceGetFieldValues. Run as one command on a lent H200 machine, OUT set.
import pynvml as n,time,json,threading
n.nvmlInit();h=n.nvmlDeviceGetHandleByIndex(0)
I,A=n.NVML_FI_DEV_POWER_INSTANT,n.NVML_FI_DEV_POWER_AVERAGE
v=n.nvmlDeviceGetFieldValues(h,[I,A,(I,0),1])
print(type(v).__name__,[(x.fieldId,x.scopeId,x.nvmlReturn,x.valueType,x.value.uiVal,x.latencyUsec) for x in v],n.nvmlDeviceGetPowerUsage(h))
t=time.perf_counter()
for _ in range(50):n.nvmlDeviceGetFieldValues(h,[I])
print("field_us",(time.perf_counter()-t)/50*1e6)
import torch
a=torch.randn(8192,8192,device="cuda",dtype=torch.bfloat16);c=torch.empty_like(a);torch.cuda.synchronize()
S=[];st=threading.Event();ph=["idle"]
def s():
 t0=time.monotonic()
 while not st.is_set():
  f=n.nvmlDeviceGetFieldValues(h,[I,A]);S.append((round(time.monotonic()-t0,3),ph[0],f[0].value.uiVal,f[1].value.uiVal,n.nvmlDeviceGetClockInfo(h,n.NVML_CLOCK_SM),n.nvmlDeviceGetCurrentClocksEventReasons(h)));time.sleep(0.02)
T=threading.Thread(target=s);T.start();time.sleep(1.5);ph[0]="gemm";e=time.monotonic()+2.5
while time.monotonic()<e:
 for _ in range(10):torch.matmul(a,a,out=c)
 torch.cuda.synchronize()
ph[0]="idle";time.sleep(1.5);st.set();T.join()
json.dump(S,open(__import__("os").environ["OUT"]+"/step.json","w"))
for r in S[::4]:print(*r)
