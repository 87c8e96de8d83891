//! Access control and applications (GM/T 0016-2012, 7.3 and 7.4): PINs that count down
//! and lock, the secure state, applications created after device authentication.

use super::*;

impl SkfEngine {
    /// `SKF_VerifyPIN`: `retry` gets the tries left when the PIN is wrong or locked.
    pub fn verify_pin(&self, h: usize, t: u32, pin: &[u8], retry: &mut u32) -> Result<(), Sar> {
        let a = self.app(h)?;
        let t = PinType::from_ulong(t)?;
        self.enter(&a.dev, "SKF_VerifyPIN")?;
        self.read(&a.dev, |_, l| {
            if pin.len() > l.pin_max {
                return Err(SAR_PIN_LEN_RANGE);
            }
            Ok(())
        })?;
        self.delay(&a.dev, Op::Login, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| Ok(dev.verify_pin(&a.name, t, pin)))?
            .map_err(|(sar, left)| {
                *retry = left;
                sar
            })?;
        let mut st = self.lock()?;
        let r = st
            .secure
            .entry((a.dev.slot, a.dev.insertion, a.name.clone()))
            .or_default();
        match t {
            PinType::Admin => r.admin = true,
            PinType::User => r.user = true,
        }
        Ok(())
    }

    /// `SKF_ChangePIN`: the old PIN (counting down when wrong) and a new one within the
    /// token's length bounds.
    pub fn change_pin(
        &self,
        h: usize,
        t: u32,
        old: &[u8],
        new: &[u8],
        retry: &mut u32,
    ) -> Result<(), Sar> {
        let a = self.app(h)?;
        let t = PinType::from_ulong(t)?;
        self.enter(&a.dev, "SKF_ChangePIN")?;
        self.read(&a.dev, |_, l| {
            if old.len() > l.pin_max {
                return Err(SAR_PIN_LEN_RANGE);
            }
            check_pin_len(new, l)
        })?;
        self.delay(&a.dev, Op::SetPin, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| Ok(dev.change_pin(&a.name, t, old, new)))?
            .map_err(|(sar, left)| {
                *retry = left;
                sar
            })
    }

    /// `SKF_GetPINInfo`: (maximum retries, retries left, still the initial PIN).
    pub fn pin_info(&self, h: usize, t: u32) -> Result<(u32, u32, bool), Sar> {
        let a = self.app(h)?;
        let t = PinType::from_ulong(t)?;
        self.enter(&a.dev, "SKF_GetPINInfo")?;
        self.read(&a.dev, |dev, _| dev.pin_info(&a.name, t))
    }

    /// `SKF_UnblockPIN`: the administrator PIN sets a new user PIN and resets its counter;
    /// `retry` gets the administrator's tries left when that PIN is wrong or locked.
    pub fn unblock_pin(
        &self,
        h: usize,
        admin: &[u8],
        new_user: &[u8],
        retry: &mut u32,
    ) -> Result<(), Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_UnblockPIN")?;
        self.read(&a.dev, |_, l| {
            if admin.len() > l.pin_max {
                return Err(SAR_PIN_LEN_RANGE);
            }
            check_pin_len(new_user, l)
        })?;
        self.delay(&a.dev, Op::InitPin, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| Ok(dev.unblock(&a.name, admin, new_user)))?
            .map_err(|(sar, left)| {
                *retry = left;
                sar
            })
    }

    /// `SKF_ClearSecureState`: forgets the PINs verified for this application.
    pub fn clear_secure_state(&self, h: usize) -> Result<(), Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_ClearSecureState")?;
        self.lock()?
            .secure
            .remove(&(a.dev.slot, a.dev.insertion, a.name));
        Ok(())
    }

    // ----- applications (7.4) -----

    /// `SKF_CreateApplication`: after `SKF_DevAuth` (`SAR_USER_NOT_LOGGED_IN` otherwise);
    /// returns the opened application.
    #[allow(clippy::too_many_arguments)]
    pub fn create_app(
        &self,
        h: usize,
        name: &[u8],
        admin_pin: &[u8],
        admin_retries: u32,
        user_pin: &[u8],
        user_retries: u32,
        create_file_rights: u32,
    ) -> Result<usize, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_CreateApplication")?;
        if !d.authed {
            return Err(SAR_USER_NOT_LOGGED_IN);
        }
        self.read(&d, |_, l| {
            check_pin_len(admin_pin, l)?;
            check_pin_len(user_pin, l)
        })?;
        self.delay(&d, Op::InitToken, Duration::ZERO)?;
        let name = self.commit(&d, |dev, l| {
            dev.create_app(
                NewApplication {
                    name,
                    admin_pin,
                    admin_retries,
                    user_pin,
                    user_retries,
                    create_file_rights,
                },
                l.capacity,
            )
        })?;
        self.add(Handle::App { dev: h, name })
    }

    /// `SKF_EnumApplication`.
    pub fn enum_apps(&self, h: usize) -> Result<Vec<String>, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_EnumApplication")?;
        self.read(&d, |dev, _| Ok(dev.apps().keys().cloned().collect()))
    }

    /// `SKF_DeleteApplication`: after `SKF_DevAuth`; its handles in this process close.
    pub fn delete_app(&self, h: usize, name: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_DeleteApplication")?;
        if !d.authed {
            return Err(SAR_USER_NOT_LOGGED_IN);
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_APPLICATION_NOT_EXISTS)?;
        self.delay(&d, Op::Destroy, Duration::ZERO)?;
        self.commit(&d, |dev, _| dev.delete_app(&name))?;
        let mut st = self.lock()?;
        // This process's handles on that application of this device (any connection).
        let on_device = |dev: &usize| matches!(st.handles.get(dev), Some(Handle::Dev(c)) if c.slot == d.slot && c.insertion == d.insertion);
        let apps: Vec<usize> = st
            .handles
            .iter()
            .filter(
                |(_, x)| matches!(x, Handle::App { name: n, dev } if *n == name && on_device(dev)),
            )
            .map(|(k, _)| *k)
            .collect();
        for a in apps {
            Self::close_tree(&mut st, a);
        }
        st.secure.remove(&(d.slot, d.insertion, name));
        Ok(())
    }

    /// `SKF_OpenApplication`.
    pub fn open_app(&self, h: usize, name: &[u8]) -> Result<usize, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_OpenApplication")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_APPLICATION_NOT_EXISTS)?;
        self.read(&d, |dev, _| dev.app(&name).map(|_| ()))?;
        self.add(Handle::App { dev: h, name })
    }

    /// `SKF_CloseApplication`: its container handles close too; the secure state stays
    /// (until `SKF_ClearSecureState` or the last `SKF_DisConnectDev`).
    pub fn close_app(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        if !matches!(st.handles.get(&h), Some(Handle::App { .. })) {
            return Err(SAR_INVALIDHANDLEERR);
        }
        Self::close_tree(&mut st, h);
        Ok(())
    }
}
