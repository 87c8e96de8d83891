//! Devices and device authentication (GM/T 0016-2012, 7.1 and 7.2), and random numbers.

use super::*;

impl SkfEngine {
    /// `SKF_EnumDev`: the names of slots holding an SKF device, or (`present` false) of
    /// every slot.
    pub fn enum_dev(&self, present: bool) -> Result<Vec<String>, Sar> {
        Ok(self
            .skf_slots()?
            .iter()
            .enumerate()
            .filter(|(_, s)| !present || s.is_some())
            .map(|(i, _)| dev_name(i))
            .collect())
    }

    /// `SKF_ConnectDev`.
    pub fn connect(&self, name: &[u8]) -> Result<usize, Sar> {
        let slots = self.skf_slots()?;
        let slot = self.slot_of(name, slots.len())?;
        let (serial, insertion) = slots[slot].clone().ok_or(SAR_DEVICE_REMOVED)?;
        let ctx = DevCtx {
            handle: 0,
            slot,
            serial: serial.clone(),
            insertion,
            authed: false,
        };
        self.enter(&ctx, "SKF_ConnectDev")?;
        self.add(Handle::Dev(Dev {
            slot,
            serial,
            insertion,
            authed: false,
            challenge: None,
        }))
    }

    /// `SKF_DisConnectDev`: also for a device that was pulled. The last connection to a
    /// device ends the secure state of its applications in this process.
    pub fn disconnect(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        let (slot, insertion) = match st.handles.get(&h) {
            Some(Handle::Dev(d)) => (d.slot, d.insertion),
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        Self::close_tree(&mut st, h);
        let others = st
            .handles
            .values()
            .any(|o| matches!(o, Handle::Dev(d) if d.slot == slot && d.insertion == insertion));
        if !others {
            st.secure.retain(|k, _| !(k.0 == slot && k.1 == insertion));
        }
        Ok(())
    }

    /// `SKF_GetDevState`: `DEV_PRESENT_STATE` or `DEV_ABSENT_STATE`; a name that is not
    /// one of the rack's is `SAR_INVALIDPARAMERR`.
    pub fn dev_state(&self, name: &[u8]) -> Result<u32, Sar> {
        let slots = self.skf_slots()?;
        let slot = self.slot_of(name, slots.len())?;
        Ok(if slots[slot].is_some() {
            DEV_PRESENT_STATE
        } else {
            DEV_ABSENT_STATE
        })
    }

    /// `SKF_WaitForDevEvent`: blocks until an SKF device arrives in or leaves a slot since
    /// last reported; (name, `DEV_EVENT_ARRIVAL` or `DEV_EVENT_REMOVAL`). A device swapped
    /// between two looks is reported as a removal, then an arrival. A name longer than
    /// `cap - 1` bytes → `SAR_BUFFER_TOO_SMALL` with `needed` set, the event kept.
    /// `SKF_CancelWaitForDevEvent` ends the wait with `SAR_NOT_EVENTERR`.
    pub fn wait_for_dev_event(&self, cap: usize, needed: &mut usize) -> Result<(String, u32), Sar> {
        let generation = {
            let mut st = self.lock()?;
            if std::mem::take(&mut st.cancel_pending) {
                return Err(SAR_NOT_EVENTERR);
            }
            st.waiters += 1;
            self.cancel.load(Ordering::SeqCst)
        };
        let result = self.wait_loop(generation, cap, needed);
        if let Ok(mut st) = self.lock() {
            st.waiters -= 1;
        }
        result
    }

    fn wait_loop(
        &self,
        generation: u64,
        cap: usize,
        needed: &mut usize,
    ) -> Result<(String, u32), Sar> {
        loop {
            if self.cancel.load(Ordering::SeqCst) != generation {
                return Err(SAR_NOT_EVENTERR);
            }
            let now: Vec<Option<u64>> = self
                .skf_slots()?
                .into_iter()
                .map(|s| s.map(|(_, i)| i))
                .collect();
            {
                let mut st = self.lock()?;
                if st.seen.len() < now.len() {
                    st.seen.resize(now.len(), None);
                }
                if let Some(i) = (0..now.len()).find(|i| st.seen[*i] != now[*i]) {
                    let name = dev_name(i);
                    if name.len() + 1 > cap {
                        *needed = name.len() + 1;
                        return Err(SAR_BUFFER_TOO_SMALL);
                    }
                    let event = if st.seen[i].is_some() {
                        st.seen[i] = None;
                        DEV_EVENT_REMOVAL
                    } else {
                        st.seen[i] = now[i];
                        DEV_EVENT_ARRIVAL
                    };
                    return Ok((name, event));
                }
            }
            std::thread::sleep(POLL * 2);
        }
    }

    /// `SKF_CancelWaitForDevEvent`: every wait in progress returns `SAR_NOT_EVENTERR`; with
    /// none in progress, the next wait does (so a cancel that comes just before its waiter
    /// starts to wait is not lost).
    pub fn cancel_wait(&self) -> Result<(), Sar> {
        let mut st = self.lock()?;
        self.cancel.fetch_add(1, Ordering::SeqCst);
        if st.waiters == 0 {
            st.cancel_pending = true;
        }
        Ok(())
    }

    /// `SKF_SetLabel` (no authentication needed, as on most tokens).
    pub fn set_label(&self, h: usize, label: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_SetLabel")?;
        self.write_delay(&d, label.len())?;
        self.commit(&d, |dev, _| dev.set_label(label))
    }

    /// `SKF_GetDevInfo`.
    pub fn dev_info(&self, h: usize) -> Result<DevInfo, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_GetDevInfo")?;
        let t = self.rack.token(&d.serial).map_err(io)?;
        let dev = t.skf().ok_or(SAR_DEVICE_REMOVED)?;
        let total = t.limits().1;
        Ok(DevInfo {
            label: dev.label().to_string(),
            serial: t.serial().to_string(),
            manufacturer: t.manufacturer().to_string(),
            issuer: t.manufacturer().to_string(),
            total_space: u32::try_from(total).unwrap_or(u32::MAX),
            free_space: u32::try_from(total.saturating_sub(dev.used_bytes())).unwrap_or(u32::MAX),
        })
    }

    /// `SKF_LockDev` / `SKF_UnlockDev`: the simulated device serves one call at a time
    /// anyway (the rack's lock); only the handle and the fault point are checked.
    pub fn lock_dev(&self, h: usize, function: &str) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, function)
    }

    // ----- device authentication (7.2) -----

    /// `SKF_GenRandom`: at most [`MAX_RANDOM`] bytes. A random of 16 bytes or fewer is
    /// also the challenge of the next `SKF_DevAuth` (zero-padded to 16 bytes).
    pub fn gen_random(&self, h: usize, out: &mut [u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_GenRandom")?;
        self.delay(&d, Op::Random, Duration::ZERO)?;
        crate::rack::crypto::random_bytes(out);
        let challenge = (!out.is_empty() && out.len() <= 16).then(|| {
            let mut c = Zeroizing::new([0u8; 16]);
            c[..out.len()].copy_from_slice(out);
            c
        });
        if let Some(Handle::Dev(dev)) = self.lock()?.handles.get_mut(&h) {
            dev.challenge = challenge;
        }
        Ok(())
    }

    /// `SKF_DevAuth`: `data` must be the challenge (the last `SKF_GenRandom` on this
    /// connection) encrypted with the device key in SM4-ECB: 16 bytes. The challenge is used
    /// once, right or wrong. `SAR_FAIL` when the data is wrong or there is no challenge.
    pub fn dev_auth(&self, h: usize, data: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_DevAuth")?;
        let challenge = match self.lock()?.handles.get_mut(&h) {
            Some(Handle::Dev(dev)) => {
                dev.authed = false;
                dev.challenge.take()
            }
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        if data.len() != 16 {
            return Err(SAR_INDATALENERR);
        }
        let challenge = challenge.ok_or(SAR_FAIL)?;
        self.delay(&d, Op::Login, Duration::ZERO)?;
        let key = self.read(&d, |dev, _| dev.dev_auth_key())?;
        let expected = gm::sm4_ecb(&key, &challenge[..], true)?;
        if expected[..] != *data {
            return Err(SAR_FAIL);
        }
        if let Some(Handle::Dev(dev)) = self.lock()?.handles.get_mut(&h) {
            dev.authed = true;
        }
        Ok(())
    }

    /// `SKF_ChangeDevAuthKey`: after `SKF_DevAuth` on this connection
    /// (`SAR_USER_NOT_LOGGED_IN` otherwise); a 16-byte SM4 key.
    pub fn change_dev_auth_key(&self, h: usize, key: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_ChangeDevAuthKey")?;
        if !d.authed {
            return Err(SAR_USER_NOT_LOGGED_IN);
        }
        self.write_delay(&d, key.len())?;
        self.commit(&d, |dev, _| dev.set_dev_auth_key(key))
    }
}
